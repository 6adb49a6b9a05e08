"""`lorafleet prepare`: raw chat JSONL in, a templated, loss-masked, split dataset out.

read lines → parse and validate → skip duplicates → render template and locate assistant spans →
tokenize the chunk in one batch → fit the length limit → split → write, one chunk at a time, so
memory stays flat however large the input is. Tokenizing a chunk (Rust, without the GIL) runs in a
worker thread while the main thread parses and renders the next one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from lorafleet.data.dataset import PrepareReport
from lorafleet.data.formats import Record, RejectedLine, parse_line, read_lines
from lorafleet.data.tally import Tally, chat_key, split_for
from lorafleet.data.template import ChatEncoder, Encoded, Rendered
from lorafleet.data.validate import Chat, Reason, Rejection
from lorafleet.data.writer import DatasetWriter, check_out_dir, publish, staging_dir
from lorafleet.models import EMBEDDED_DEFAULT, load_tokenizer, model_fingerprint, resolve_model, tokenizer_fingerprint


class PrepareOptions(BaseModel):
    """The options of `lorafleet prepare`, with its defaults."""

    model: str = Field(EMBEDDED_DEFAULT, description="base model whose chat template and tokenizer are applied")
    max_seq_length: int = Field(2048, ge=8, description="longest sample in tokens, template tokens included")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="fail when rejected / lines exceeds this")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of samples held out for evaluation")
    seed: int = Field(0, description="decides the train/eval split")
    on_overflow: Literal["truncate", "drop"] = Field(
        "truncate", description="over-long samples: remove whole earlier turns, or reject them"
    )
    chunk_size: int = Field(1000, ge=1, description="conversations tokenized per batch")


class PrepareError(ValueError):
    """Inputs or --out that prepare cannot use; nothing was written."""


class ErrorRateExceeded(RuntimeError):
    """More lines were rejected than --max-error-rate allows; report.json and rejected.jsonl were still written."""

    def __init__(self, report: PrepareReport, out: Path, max_error_rate: float) -> None:
        self.report = report
        self.out = out
        super().__init__(
            f"{report.rejected} of {report.lines} lines rejected: error rate {report.error_rate:.2%} exceeds "
            f"--max-error-rate {max_error_rate:.2%}; see {out / 'rejected.jsonl'} (no dataset was written)"
        )


def prepare_dataset(
    inputs: list[Path],
    out: Path,
    options: PrepareOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PrepareReport:
    """Prepare `inputs` (JSONL, optionally gzip) into the dataset folder `out` and return its report.

    `out` appears complete or not at all (staging folder + rename); an earlier prepared dataset there
    is replaced. `on_progress(lines_read)` is called after every chunk.
    Raises PrepareError for missing inputs or an unusable `out`, ModelError for a bad --model, and
    ErrorRateExceeded (after writing report.json and rejected.jsonl, without the splits) when too many
    lines were rejected.
    """
    options = options or PrepareOptions()
    inputs, out = [Path(p) for p in inputs], Path(out)
    if not inputs:
        raise PrepareError("no input files given")
    if missing := [str(p) for p in inputs if not p.is_file()]:
        raise PrepareError(f"input file not found: {', '.join(missing)}")
    check_out_dir(out)
    ref = resolve_model(options.model)
    encoder = ChatEncoder(load_tokenizer(ref.path), ref.path)
    tally = Tally(options.max_seq_length)
    staging = staging_dir(out)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        writer = DatasetWriter(staging, with_file_names=len(inputs) > 1)
        try:
            _stream(inputs, encoder, options, writer, tally, on_progress)
        finally:
            writer.close()
        report = tally.report(
            model=ref.name,
            model_fingerprint=model_fingerprint(ref.path),
            tokenizer_fingerprint=tokenizer_fingerprint(ref.path),
            max_seq_length=options.max_seq_length,
            seed=options.seed,
        )
        writer.write_report(report.model_dump_json(indent=2))
        exceeded = report.error_rate > options.max_error_rate
        if exceeded:
            writer.drop_splits()
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if exceeded:
        raise ErrorRateExceeded(report, out, options.max_error_rate)
    return report


def _stream(
    inputs: list[Path], encoder: ChatEncoder, options: PrepareOptions, writer: DatasetWriter, tally: Tally,
    on_progress: Callable[[int], None] | None,
) -> None:
    """Run every chunk through plan → encode (worker thread) → finish, with one chunk encoding ahead."""
    writes: list[Future] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight: tuple[_Planned, Future] | None = None
        for chunk in _chunks(_parsed_lines(inputs), options.chunk_size):
            planned = _plan_chunk(chunk, encoder, tally)
            encoding = pool.submit(_encode, planned, encoder)
            if in_flight:
                writes += _finish_chunk(in_flight[0], in_flight[1].result(), encoder, options, writer, tally, pool)
                if on_progress:
                    on_progress(tally.lines)
            in_flight = planned, encoding
        if in_flight:
            writes += _finish_chunk(in_flight[0], in_flight[1].result(), encoder, options, writer, tally, pool)
    for write in writes:
        write.result()  # re-raises a failed Parquet write


def _parsed_lines(inputs: list[Path]) -> Iterator[Record | RejectedLine]:
    for path in inputs:
        for raw in read_lines(path):
            yield parse_line(raw)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass
class _Planned:
    """A chunk after parsing and rendering, waiting for its tokenization."""

    rejected: dict[int, RejectedLine]  # position in the chunk → rejection
    pending: list[tuple[int, Record, int]]  # (position, record, chat key) of records to template
    plans: list[Rendered | Rejection]  # one per pending record


def _plan_chunk(chunk: list[Record | RejectedLine], encoder: ChatEncoder, tally: Tally) -> _Planned:
    tally.lines += len(chunk)
    rejected = {i: item for i, item in enumerate(chunk) if isinstance(item, RejectedLine)}
    # Duplicates of samples already written are skipped before the costly templating.
    pending = [(i, item, chat_key(item.chat)) for i, item in enumerate(chunk) if isinstance(item, Record)]
    tally.duplicates += sum(key in tally.seen for _, _, key in pending)
    pending = [p for p in pending if p[2] not in tally.seen]
    return _Planned(rejected, pending, [encoder.plan(record.chat) for _, record, _ in pending])


def _encode(planned: _Planned, encoder: ChatEncoder) -> list[Encoded | Rejection]:
    """Tokenize the renderable plans of a chunk; rejections pass through in place."""
    renderable = [p for p in planned.plans if isinstance(p, Rendered)]
    encoded = iter(encoder.encode_batch(renderable) if renderable else ())
    return [next(encoded) if isinstance(p, Rendered) else p for p in planned.plans]


def _finish_chunk(
    planned: _Planned, results: list[Encoded | Rejection], encoder: ChatEncoder, options: PrepareOptions,
    writer: DatasetWriter, tally: Tally, pool: ThreadPoolExecutor,
) -> list[Future]:
    """Fit, dedupe, split and write one tokenized chunk; rejections keep line order.

    The Parquet writes go to `pool` (one worker, so in submission order; Arrow releases the GIL);
    their futures are returned for the caller to check.
    """
    rejected = planned.rejected
    rows: dict[str, list[tuple[str, int, Encoded]]] = {"train": [], "eval": []}
    for (i, record, key), result in zip(planned.pending, results):
        truncated = False
        if isinstance(result, Encoded) and result.num_tokens > options.max_seq_length:
            result, truncated = _fit(record.chat, result.num_tokens, encoder, options)
        if isinstance(result, Rejection):
            rejected[i] = RejectedLine(record.file, record.line, result.reason, result.message, record.raw)
            continue
        if key in tally.seen:  # an earlier line of this chunk, or of the chunk planned alongside it
            tally.duplicates += 1
            continue
        tally.seen.add(key)
        split = split_for(key, options.seed, options.eval_fraction)
        rows[split].append((record.file, record.line, result))
        tally.add_sample(split, result, record.format, truncated)

    ordered = [rejected[i] for i in sorted(rejected)]
    writer.write_rejections(ordered)
    for entry in ordered:
        tally.add_rejection(entry.reason)
    return [pool.submit(writer.write_samples, split, samples) for split, samples in rows.items()]


def _fit(chat: Chat, length: int, encoder: ChatEncoder, options: PrepareOptions) -> tuple[Encoded | Rejection, bool]:
    """Bring an over-long sample within max_seq_length, or reject it with its length."""
    limit = options.max_seq_length
    if options.on_overflow == "drop":
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

