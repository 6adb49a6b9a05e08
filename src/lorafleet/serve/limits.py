"""Per-adapter context limits: an adapter never serves a longer context than it was trained on.

The engines' --max-model-len is the longest `max_seq_length` among routed adapters, so the engine
itself enforces that one. An adapter trained on shorter sequences needs a check of its own: only
then does the gateway count the prompt's tokens, with the engine's own `/tokenize` (the same chat
template and tokenizer the completion will use), so the common case costs nothing.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from lorafleet.registry.fleet import ServedVersion
from lorafleet.serve.errors import GatewayError, bad_request, from_engine
from lorafleet.serve.replicas import Replica


def completion_budget(prompt_tokens: int, requested: int | None, limit: int, ref: str) -> int:
    """The max_tokens to send: the requested one if prompt + it fits in `limit`, else a 400 naming the limit.

    Without a requested max_tokens the answer may use whatever the limit leaves after the prompt.
    """
    if prompt_tokens >= limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens ({ref} was trained with max_seq_length {limit}). "
            f"However, your prompt has {prompt_tokens} tokens. Please reduce the length of the prompt.", "messages")
    if requested is not None and prompt_tokens + requested > limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens ({ref} was trained with max_seq_length {limit}). "
            f"However, you requested {prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} "
            "for the completion). Please reduce the prompt or max_tokens.", "max_tokens")
    return requested if requested is not None else limit - prompt_tokens


def needs_check(version: ServedVersion, replica: Replica) -> bool:
    """True when the adapter's training length is below what the engine would allow."""
    return replica.max_model_len is not None and version.max_seq_length < replica.max_model_len


async def apply_adapter_limit(client: aiohttp.ClientSession, replica: Replica, version: ServedVersion, body: dict) -> dict:
    """`body` with max_tokens bounded by the adapter's limit; raises GatewayError (400) past it."""
    counts = [await _count(client, replica, version.ref, item) for item in _prompts(body)]
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    requested = body.get(key)
    budget = completion_budget(max(counts, default=0), requested if isinstance(requested, int) else None,
                               version.max_seq_length, version.ref)
    return {**body, key: budget}


def _prompts(body: dict) -> list[dict]:
    """The /tokenize requests whose counts matter: the conversation, or each completion prompt."""
    if isinstance(body.get("messages"), list):
        return [{"messages": body["messages"], "add_generation_prompt": True}]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [{"prompt": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [{"count": len(prompt)}]
    if isinstance(prompt, list):
        return [{"prompt": p} if isinstance(p, str) else {"count": len(p) if isinstance(p, list) else 0} for p in prompt]
    return []


async def _count(client: aiohttp.ClientSession, replica: Replica, ref: str, item: dict) -> int:
    if "count" in item:
        return int(item["count"])
    try:
        async with client.post(f"{replica.url}/tokenize", data=json.dumps({"model": ref, **item}), headers=replica.post_headers,
                               timeout=aiohttp.ClientTimeout(total=30)) as response:
            if response.status != 200:
                raise from_engine(response.status, await response.read())
            return int((await response.json())["count"])
    except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as exc:
        raise GatewayError(502, f"The engine could not count the prompt's tokens ({type(exc).__name__}).", "engine_error",
                           code="engine_error") from None
