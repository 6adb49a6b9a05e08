"""Request clamps: what a completion request may ask for before the gateway spends anything on it.

Each refusal is a 400 in OpenAI's shape whose `param` names the parameter (whole-body problems —
size, UTF-8, nesting — have no parameter; their message says "request body"). These are pure
functions of the body and the limits; the engine still validates everything they let through.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.bounded_json import JsonLimits, JsonRefused, parse_json
from lorafleet.serve.errors import GatewayError, bad_request

Endpoint = Literal["chat.completions", "completions"]
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_NUMBER = (int, float)
# Parameters with a JSON type the gateway checks (bool is not accepted where a number is meant, although Python says it is one).
TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "stream": (bool,), "max_tokens": (int,), "max_completion_tokens": (int,), "n": (int,),
    "temperature": _NUMBER, "top_p": _NUMBER, "frequency_penalty": _NUMBER, "presence_penalty": _NUMBER, "seed": (int,),
    "stop": (str, list), "user": (str,), "stream_options": (dict,), "logit_bias": (dict,), "response_format": (dict,),
    "tools": (list,), "tool_choice": (str, dict), "top_logprobs": (int,), "echo": (bool,), "best_of": (int,),
    "ignore_eos": (bool,), "top_k": (int,), "min_tokens": (int,), "suffix": (str,),
}
TYPE_NAMES = {str: "a string", bool: "true or false", int: "an integer", float: "a number", list: "an array", dict: "an object"}


class RequestLimits(BaseModel):
    """How much one completion request may ask for."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(2**20, ge=1024, description="largest request body accepted (bytes)")
    max_depth: int = Field(32, ge=4, description="deepest JSON nesting accepted in a request body")
    max_messages: int = Field(512, ge=1, description="most messages in one chat request")
    max_n: int = Field(8, ge=1, description="most choices (n, best_of) one request may ask for")
    max_stop: int = Field(4, ge=0, description="most stop sequences")
    max_stop_chars: int = Field(256, ge=1, description="longest stop sequence (characters)")
    max_logprobs: int = Field(20, ge=0, description="highest logprobs (completions) / top_logprobs (chat)")


def parse_request(raw: bytes, limits: RequestLimits) -> dict:
    """The body as a JSON object within the size and nesting limits; raises GatewayError (400)."""
    if len(raw) > limits.max_body_bytes:
        raise body_too_large(limits.max_body_bytes)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"The request body is not valid UTF-8 ({exc.reason} at byte {exc.start}).") from None
    try:
        body = parse_json(raw, "the request body", JsonLimits(limits.max_body_bytes, limits.max_depth))
    except JsonRefused as exc:
        raise bad_request(f"{str(exc)[0].upper()}{str(exc)[1:]}.") from None
    if not isinstance(body, dict):
        raise bad_request(f"The request body must be a JSON object, not {type(body).__name__}.")
    return body


def body_too_large(limit: int) -> GatewayError:
    return bad_request(f"The request body is larger than {limit:,} bytes, the most this gateway accepts.")


def check_request(body: dict, endpoint: Endpoint, limits: RequestLimits) -> None:
    """Every clamp on a parsed body; raises GatewayError (400) naming the first parameter that breaks one."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("'model' is required: an alias, a NAME@vN version or the base model's name.", "model")
    for name, types in TYPES.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise bad_request(f"'{name}' must be {' or '.join(TYPE_NAMES[t] for t in types)}, not {_json_type(value)}.", name)
    if endpoint == "chat.completions":
        _check_messages(body.get("messages"), limits)
        _check_logprobs(body, "top_logprobs", limits.max_logprobs)
        if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
            raise bad_request(f"'logprobs' must be true or false, not {_json_type(body['logprobs'])}.", "logprobs")
    else:
        if not isinstance(body.get("prompt"), (str, list)) or not body["prompt"]:
            raise bad_request("'prompt' is required: a string, or a list of strings or token ids.", "prompt")
        _check_logprobs(body, "logprobs", limits.max_logprobs)
    for name in ("n", "best_of"):
        if body.get(name) is not None and not 1 <= body[name] <= limits.max_n:
            raise bad_request(f"'{name}' must be between 1 and {limits.max_n}, not {body[name]}.", name)
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None and body[name] < 1:
            raise bad_request(f"'{name}' must be at least 1, not {body[name]}.", name)
    _check_stop(body.get("stop"), limits)


def check_max_tokens(body: dict, context: int | None, model: str) -> None:
    """A requested completion longer than the model's whole context can never be served: 400 on `max_tokens`."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if context is not None and isinstance(value, int) and value > context:
            raise bad_request(f"'{name}' is {value}, more than the {context}-token context of {model!r}.", name)


def _check_messages(messages: object, limits: RequestLimits) -> None:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects.", "messages")
    if len(messages) > limits.max_messages:
        raise bad_request(f"'messages' has {len(messages)} messages, more than the {limits.max_messages} allowed.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{i}]' must be an object with 'role' and 'content', not {_json_type(message)}.", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"'messages[{i}].role' is {role!r}; it must be one of {', '.join(sorted(ROLES))}.", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"'messages[{i}].content' must be a string or an array of parts, not {_json_type(content)}.",
                              f"messages[{i}].content")


def _check_logprobs(body: dict, name: str, limit: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"'{name}' must be an integer, not {_json_type(value)}.", name)
    if not 0 <= value <= limit:
        raise bad_request(f"'{name}' must be between 0 and {limit}, not {value}.", name)


def _check_stop(stop: object, limits: RequestLimits) -> None:
    if stop is None:
        return
    sequences = [stop] if isinstance(stop, str) else stop
    assert isinstance(sequences, list)  # TYPES made sure
    if len(sequences) > limits.max_stop:
        raise bad_request(f"'stop' has {len(sequences)} sequences, more than the {limits.max_stop} allowed.", "stop")
    for sequence in sequences:
        if not isinstance(sequence, str):
            raise bad_request(f"'stop' must hold strings, not {_json_type(sequence)}.", "stop")
        if len(sequence) > limits.max_stop_chars:
            raise bad_request(f"a 'stop' sequence has {len(sequence)} characters, more than the {limits.max_stop_chars} allowed.", "stop")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", int: "an integer", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__)
