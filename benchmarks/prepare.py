"""Benchmark: `lorafleet prepare` versus the seed's approach on the same synthetic conversations.

The seed's approach (baseline): per line `json.loads`, a pydantic model, and
`tokenizer.apply_chat_template(tokenize=True)` in a Python loop, collecting every sample in a list.
It computes no loss mask, writes nothing and keeps everything in memory. lorafleet's prepare does
more (per-line format detection, loss mask, end-of-turn checks, dedupe, split, Parquet, report).

Each side runs in its own subprocess. conversations/s counts the processing only (after imports and
tokenizer load); CPU ms per conversation is user+system time of that processing, worker processes
included (a fairer figure than wall time on a machine shared with other jobs); peak RSS is the
largest sum of proportional resident memory (Pss) over the subprocess and any workers, sampled every
50 ms (or the largest single process's maximum RSS, if that is higher).

    .venv/bin/python benchmarks/prepare.py --n 100000
    .venv/bin/python benchmarks/prepare.py --memory 10000 200000   # lorafleet only: peak RSS vs input size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import resource
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

SEED = 1


def write_input(path: Path, n: int) -> None:
    """`n` synthetic support conversations in the seed's `conversations` role/content format."""
    from lorafleet.demo.synthetic import as_record, conversation
    import random

    rng = random.Random(SEED)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps(as_record(conversation(rng), "conversations"), ensure_ascii=False) + "\n")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the prepare workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_lorafleet(input_path: Path, model: str, workers: int = 0) -> dict:
    from lorafleet.data.prepare import PrepareOptions, prepare_dataset
    from lorafleet.models import load_tokenizer, resolve_model

    load_tokenizer(resolve_model(model).path)  # warm-up: the first load also fills the OS file cache
    out = input_path.parent / "prepared"
    start, cpu = time.perf_counter(), cpu_seconds()
    report = prepare_dataset([input_path], out, PrepareOptions(model=model, workers=workers))
    return {
        "seconds": time.perf_counter() - start,
        "cpu": cpu_seconds() - cpu,
        "samples": report.accepted + report.duplicates,
        "tokens": report.tokens.total,
    }


def run_baseline(input_path: Path, model: str) -> dict:
    from pydantic import BaseModel, Field

    from lorafleet.models import load_tokenizer, resolve_model

    class Message(BaseModel):
        role: str = Field(..., pattern="^(user|assistant|system)$")
        content: str = Field(..., min_length=1)

    class Conversation(BaseModel):
        conversations: list[Message]

    tokenizer = load_tokenizer(resolve_model(model).path)
    start, cpu = time.perf_counter(), cpu_seconds()
    samples, errors, tokens = [], 0, 0
    with input_path.open(encoding="utf-8") as f:
        for line in f:
            try:
                validated = Conversation(**json.loads(line))
                messages = [{"role": m.role, "content": m.content} for m in validated.conversations]
                ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
                samples.append({"input_ids": ids})
                tokens += len(ids)
            except Exception:
                errors += 1
    return {"seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu, "samples": len(samples), "tokens": tokens}


def tree_rss_mib(pid: int) -> float:
    """Proportional resident memory (Pss: shared pages split among sharers) of `pid` and its descendants (Linux)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/smaps_rollup").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("Pss:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue  # the process ended between listing and reading
    return total / 1024


def measure(side: str, input_path: Path, model: str, workers: int = 0) -> dict:
    """Run one side in a subprocess; returns its timing plus peak RSS (MiB) of its process tree."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", side, "--input", str(input_path), "--model", model, "--workers", str(workers)],
        stdout=subprocess.PIPE,
    )
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], tree_rss_mib(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{side} failed with exit status {os.waitstatus_to_exitcode(status)}")
    result = json.loads(output.decode().strip().splitlines()[-1])
    result["peak_rss_mib"] = max(peak[0], usage.ru_maxrss / 1024)  # ru_maxrss (KiB): the largest single process
    result["per_s"] = result["samples"] / result["seconds"]
    result["cpu_ms"] = 1000 * result["cpu"] / result["samples"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="conversations to generate")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--memory", type=int, nargs="*", help="only measure lorafleet's peak RSS at these sizes")
    parser.add_argument("--workers", type=int, default=0, help="lorafleet's --workers (0 = automatic)")
    parser.add_argument("--child", choices=["lorafleet", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = run_lorafleet if args.child == "lorafleet" else run_baseline
        print(json.dumps(run(args.input, args.model, args.workers) if run is run_lorafleet else run(args.input, args.model)))
        return

    from lorafleet.models import resolve_model

    resolve_model(args.model)  # convert the embedded model once, outside the timings
    console = Console(width=130)
    console.print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {date.today()}, model {args.model}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            table = Table("conversations", "lorafleet conv/s", "CPU ms/conv", "peak RSS MiB")
            for n in args.memory:
                path = Path(tmp) / f"in-{n}.jsonl"
                write_input(path, n)
                r = measure("lorafleet", path, args.model, args.workers)
                table.add_row(f"{n:,}", f"{r['per_s']:,.0f}", f"{r['cpu_ms']:.3f}", f"{r['peak_rss_mib']:,.0f}")
            console.print(table)
            return
        path = Path(tmp) / "in.jsonl"
        write_input(path, args.n)
        results = {side: measure(side, path, args.model, args.workers) for side in ("baseline", "lorafleet")}
    base, ours = results["baseline"], results["lorafleet"]
    table = Table(
        "approach", "conversations", "seconds", "conv/s", "CPU ms/conv", "peak RSS MiB", title=f"prepare, {args.n:,} conversations"
    )
    for name, r in (("seed: pydantic + apply_chat_template loop", base), ("lorafleet prepare", ours)):
        table.add_row(
            name, f"{r['samples']:,}", f"{r['seconds']:,.1f}", f"{r['per_s']:,.0f}", f"{r['cpu_ms']:.3f}", f"{r['peak_rss_mib']:,.0f}"
        )
    table.add_row(
        "ratio lorafleet / seed", "", "", f"{ours['per_s'] / base['per_s']:.2f}x",
        f"{ours['cpu_ms'] / base['cpu_ms']:.2f}x", f"{ours['peak_rss_mib'] / base['peak_rss_mib']:.2f}x",
    )
    console.print(table)


if __name__ == "__main__":
    main()
