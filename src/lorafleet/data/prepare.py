"""`lorafleet prepare`: raw chat JSONL in, a templated, loss-masked, split dataset out.

read lines → (per chunk: parse and validate → render template, locate assistant spans → tokenize in
one batch → fit the length limit) → drop duplicates → split → write. Chunks stream through, so
memory stays flat however large the input is. The per-chunk work overlaps tokenizing with rendering
in one process, or runs in worker processes on large inputs and many CPUs; results come back in
input order either way, so the output does not depend on it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from lorafleet.data.dataset import PrepareReport
from lorafleet.data.formats import RawLine, RejectedLine, read_lines
from lorafleet.data.samples import Limits, Sample, in_processes, in_thread_pipeline
from lorafleet.data.tally import Tally, split_for
from lorafleet.data.template import ChatEncoder, Encoded
from lorafleet.data.writer import DatasetWriter, check_out_dir, publish, staging_dir
from lorafleet.models import EMBEDDED_DEFAULT, load_tokenizer, model_fingerprint, resolve_model, tokenizer_fingerprint

PARALLEL_FROM_BYTES = 8 * 2**20  # below this, starting worker processes costs more than it saves


class PrepareOptions(BaseModel):
    """The options of `lorafleet prepare`, with its defaults."""

    model: str = Field(EMBEDDED_DEFAULT, description="base model whose chat template and tokenizer are applied")
    max_seq_length: int = Field(2048, ge=8, le=2**20, description="longest sample in tokens, template tokens included")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="fail when rejected / lines exceeds this")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of samples held out for evaluation")
    seed: int = Field(0, description="decides the train/eval split")
    on_overflow: Literal["truncate", "drop"] = Field(
        "truncate", description="over-long samples: remove whole earlier turns, or reject them"
    )
    chunk_size: int = Field(1000, ge=1, description="conversations tokenized per batch")
    workers: int = Field(
        0, ge=0, description="worker processes; 0 = automatic: CPUs - 1 (at most 8) for inputs over 8 MB on 4+ CPUs, else 1"
    )


class PrepareError(ValueError):
    """Inputs or --out that prepare cannot use; nothing was written."""


class PrepareRefused(RuntimeError):
    """The inputs were read but give no dataset to train on; report.json and rejected.jsonl were still written."""

    def __init__(self, report: PrepareReport, message: str) -> None:
        self.report = report
        super().__init__(message)


class ErrorRateExceeded(PrepareRefused):
    """More lines were rejected than --max-error-rate allows."""

    def __init__(self, report: PrepareReport, out: Path, max_error_rate: float) -> None:
        super().__init__(report, (
            f"{report.rejected} of {report.lines} lines rejected: error rate {report.error_rate:.2%} exceeds "
            f"--max-error-rate {max_error_rate:.2%}; see {out / 'rejected.jsonl'} (no dataset was written)"))


def no_train_samples(report: PrepareReport, out: Path, eval_fraction: float) -> str | None:
    """Why the train split of ``report`` is empty (train would refuse it), or None when it holds a sample."""
    if report.train:
        return None
    if not report.lines:
        return "the inputs hold no lines (blank lines aside): nothing to prepare (no dataset was written)"
    if report.accepted:
        return (f"all {report.accepted} accepted samples fell in the eval split (--eval-fraction {eval_fraction}): "
                "lower --eval-fraction or add data (no dataset was written)")
    return (f"none of {report.lines} lines gave a sample ({report.rejected} rejected); see {out / 'rejected.jsonl'} "
            "(no dataset was written)")


def prepare_dataset(
    inputs: list[Path],
    out: Path,
    options: PrepareOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PrepareReport:
    """Prepare `inputs` (JSONL, optionally gzip) into the dataset folder `out` and return its report.

    `out` appears complete or not at all (staging folder + rename); an earlier prepared dataset there
    is replaced. `on_progress(lines_read)` is called after every chunk.
    Raises PrepareError for missing inputs or an unusable `out`, UnreadableInput for a gzip input that is cut
    off or corrupt (nothing written), ModelError for a bad --model, and PrepareRefused (after writing
    report.json and rejected.jsonl, without the splits) when too many lines were rejected
    (ErrorRateExceeded) or the train split would be empty.
    """
    options = options or PrepareOptions()
    inputs, out = [Path(p) for p in inputs], Path(out)
    if not inputs:
        raise PrepareError("no input files given")
    if folders := [str(p) for p in inputs if p.is_dir()]:
        raise PrepareError(f"input is a folder, not a JSONL file: {', '.join(folders)}")
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
            _stream(inputs, ref.path, encoder, options, writer, tally, on_progress)
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
        refused: PrepareRefused | None = None
        if report.error_rate > options.max_error_rate:
            refused = ErrorRateExceeded(report, out, options.max_error_rate)
        elif empty := no_train_samples(report, out, options.eval_fraction):
            refused = PrepareRefused(report, empty)
        if refused:
            writer.drop_splits()
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if refused:
        raise refused
    return report


def _stream(
    inputs: list[Path], model_path: Path, encoder: ChatEncoder, options: PrepareOptions, writer: DatasetWriter,
    tally: Tally, on_progress: Callable[[int], None] | None,
) -> None:
    limits = Limits(options.max_seq_length, options.on_overflow)
    chunks = _chunks(_raw_lines(inputs), options.chunk_size)
    workers = worker_count(inputs, options)
    if workers > 1:
        results = in_processes(chunks, model_path, limits, workers)
    else:
        results = in_thread_pipeline(chunks, encoder, limits)
    for outcomes in results:
        _finish_chunk(outcomes, options, writer, tally)
        if on_progress:
            on_progress(tally.lines)


def worker_count(inputs: list[Path], options: PrepareOptions) -> int:
    """Processes to use: --workers when given; else CPUs - 1 (at most 8) for large inputs on 4+ CPUs, else 1.

    With fewer CPUs the worker processes only compete with the parent; one process that overlaps
    tokenizing with rendering (two threads) is as fast there and uses a third of the memory.
    """
    if options.workers:
        return options.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cpus < 4 or sum(p.stat().st_size for p in inputs) < PARALLEL_FROM_BYTES:
        return 1
    return min(cpus - 1, 8)


def _raw_lines(inputs: list[Path]) -> Iterator[RawLine]:
    for path in inputs:
        yield from read_lines(path)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _finish_chunk(outcomes: list[Sample | RejectedLine], options: PrepareOptions, writer: DatasetWriter, tally: Tally) -> None:
    """Count, dedupe, split and write one processed chunk (in line order)."""
    tally.lines += len(outcomes)
    rows: dict[str, list[tuple[str, int, Encoded]]] = {"train": [], "eval": []}
    rejected: list[RejectedLine] = []
    for outcome in outcomes:
        if isinstance(outcome, RejectedLine):
            rejected.append(outcome)
            tally.add_rejection(outcome.reason)
        elif outcome.key in tally.seen:
            tally.duplicates += 1
        else:
            tally.seen.add(outcome.key)
            split = split_for(outcome.key, options.seed, options.eval_fraction)
            rows[split].append((outcome.file, outcome.line, outcome.encoded))
            tally.add_sample(split, outcome.encoded, outcome.format, outcome.truncated)
    for split, samples in rows.items():
        writer.write_samples(split, samples)
    writer.write_rejections(rejected)
