"""One chunk of raw lines → samples or rejections: parse, validate, render, tokenize, fit the length limit.

A chunk's work depends only on its lines, the tokenizer and the options, so chunks can run in worker
processes (`in_processes`) and come back in order; what spans chunks (duplicates, split, counts,
writing) stays in the parent (see prepare.py). In one process, `in_thread_pipeline` overlaps the
tokenization of one chunk (Rust, without the GIL) with the parsing and rendering of the next.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lorafleet.data.formats import RawLine, Record, RejectedLine, parse_line
from lorafleet.data.tally import chat_key
from lorafleet.data.template import ChatEncoder, Encoded, Rendered
from lorafleet.data.validate import Chat, Reason, Rejection


@dataclass(frozen=True)
class Sample:
    """An accepted line: its tokens and labels, where it came from, and its identity for dedupe and split."""

    file: str
    line: int
    format: str
    key: int  # tally.chat_key of the chat as read (before any truncation)
    encoded: Encoded
    truncated: bool


@dataclass(frozen=True)
class Limits:
    """What a chunk needs from PrepareOptions (kept small: it is sent to every worker)."""

    max_seq_length: int
    on_overflow: str  # "truncate" | "drop"


@dataclass
class PlannedChunk:
    """A chunk parsed and rendered, waiting for tokenization."""

    parsed: list[Record | RejectedLine]
    records: list[Record]
    plans: list[Rendered | Rejection]  # one per record

    @property
    def renderable(self) -> list[Rendered]:
        return [p for p in self.plans if isinstance(p, Rendered)]


def plan_chunk(chunk: list[RawLine], encoder: ChatEncoder) -> PlannedChunk:
    """Parse, validate and render a chunk (pure Python: holds the GIL)."""
    parsed = [parse_line(raw) for raw in chunk]
    records = [p for p in parsed if isinstance(p, Record)]
    return PlannedChunk(parsed, records, [encoder.plan(r.chat) for r in records])


def tokenize_chunk(planned: PlannedChunk, encoder: ChatEncoder) -> list[Encoded | Rejection]:
    """Tokenize a planned chunk's rendered texts in one batch (Rust, releases the GIL)."""
    renderable = planned.renderable
    return encoder.encode_batch(renderable) if renderable else []


def complete_chunk(
    planned: PlannedChunk, tokenized: list[Encoded | Rejection], encoder: ChatEncoder, limits: Limits
) -> list[Sample | RejectedLine]:
    """Fit lengths and pair results with their lines: one result per line, in line order."""
    tokens = iter(tokenized)
    outcome: dict[int, Sample | RejectedLine] = {}
    for record, plan in zip(planned.records, planned.plans):
        result = next(tokens) if isinstance(plan, Rendered) else plan
        truncated = False
        if isinstance(result, Encoded) and result.num_tokens > limits.max_seq_length:
            result, truncated = fit(record.chat, result.num_tokens, encoder, limits)
        if isinstance(result, Rejection):
            outcome[id(record)] = RejectedLine(record.file, record.line, result.reason, result.message, record.raw)
        else:
            outcome[id(record)] = Sample(record.file, record.line, record.format, chat_key(record.chat), result, truncated)
    return [outcome[id(p)] if isinstance(p, Record) else p for p in planned.parsed]


def process_chunk(chunk: list[RawLine], encoder: ChatEncoder, limits: Limits) -> list[Sample | RejectedLine]:
    """Turn raw lines into samples or rejections, one result per line, in line order; never raises for content."""
    planned = plan_chunk(chunk, encoder)
    return complete_chunk(planned, tokenize_chunk(planned, encoder), encoder, limits)


def in_thread_pipeline(
    chunks: Iterable[list[RawLine]], encoder: ChatEncoder, limits: Limits
) -> Iterator[list[Sample | RejectedLine]]:
    """`process_chunk` over `chunks` in this process, tokenizing chunk k in a thread while chunk k+1 is rendered."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight: tuple[PlannedChunk, Future] | None = None
        for chunk in chunks:
            planned = plan_chunk(chunk, encoder)
            tokenizing = pool.submit(tokenize_chunk, planned, encoder)
            if in_flight:
                yield complete_chunk(in_flight[0], in_flight[1].result(), encoder, limits)
            in_flight = planned, tokenizing
        if in_flight:
            yield complete_chunk(in_flight[0], in_flight[1].result(), encoder, limits)


def fit(chat: Chat, length: int, encoder: ChatEncoder, limits: Limits) -> tuple[Encoded | Rejection, bool]:
    """Bring an over-long sample within max_seq_length, or reject it with its length.

    Returns the sample and whether it was truncated.
    """
    limit = limits.max_seq_length
    if limits.on_overflow == "drop":
        return Rejection(Reason.TOO_LONG, f"sample is {length} tokens; --max-seq-length is {limit} (--on-overflow drop)"), False
    candidates = shortened_chats(chat)
    shortest = encoder.encode(candidates[-1])
    if isinstance(shortest, Rejection):
        return shortest, False
    if shortest.num_tokens > limit:
        return Rejection(
            Reason.TOO_LONG,
            f"sample is {length} tokens, still {shortest.num_tokens} with only the system prompt and the last "
            f"exchange; --max-seq-length is {limit}",
        ), False
    # Lengths shrink along `candidates`: bisect for the first (the one keeping most turns) that fits.
    lo, hi, best = 0, len(candidates) - 1, shortest
    while lo < hi:
        mid = (lo + hi) // 2
        attempt = encoder.encode(candidates[mid])
        if isinstance(attempt, Encoded) and attempt.num_tokens <= limit:
            hi, best = mid, attempt
        else:
            lo = mid + 1
    return best, True


def shortened_chats(chat: Chat) -> list[Chat]:
    """Ever shorter versions of `chat` made by removing whole turns, longest first.

    Leading system messages and the last assistant turn (with the turns since the user turn that
    opened its exchange) are always kept; turns after the last assistant turn, which carry no loss,
    are dropped. Every version starts its non-system part at a user turn, as templates expect.
    """
    n_system = next((i for i, m in enumerate(chat) if m["role"] != "system"), len(chat))
    head, body = chat[:n_system], chat[n_system:]
    last_assistant = max(i for i, m in enumerate(body) if m["role"] == "assistant")
    body = body[: last_assistant + 1]
    cuts = [0] + [j for j in range(1, last_assistant) if body[j]["role"] == "user"]
    return [head + body[j:] for j in cuts]


def in_processes(
    chunks: Iterable[list[RawLine]], model_path: Path, limits: Limits, workers: int
) -> Iterator[list[Sample | RejectedLine]]:
    """`process_chunk` over `chunks` in `workers` processes, yielded in input order.

    At most two chunks per worker are in flight, so memory does not grow with the input.
    """
    # fork where available: workers start in milliseconds and inherit the imported modules.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(model_path, limits)) as pool:
        window: deque[Future] = deque()
        for chunk in chunks:
            window.append(pool.submit(_work, chunk))
            if len(window) >= 2 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


# Per worker process, set once by the pool's initializer: the tokenizer cannot be sent with each chunk.
_worker_state: dict[str, object] = {}


def _init_worker(model_path: Path, limits: Limits) -> None:
    import os

    from lorafleet.models import load_tokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism; no thread pools inside

    _worker_state["encoder"] = ChatEncoder(load_tokenizer(model_path), model_path)
    _worker_state["limits"] = limits


def _work(chunk: list[RawLine]) -> list[Sample | RejectedLine]:
    return process_chunk(chunk, _worker_state["encoder"], _worker_state["limits"])
