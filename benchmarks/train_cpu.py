"""Benchmark: LoRA training tokens/s on CPU, lorafleet's loop versus a plain transformers + PEFT loop, same data.

Model: the embedded SmolLM2-135M-Instruct, fp32, LoRA r=16 / alpha 32 / dropout 0.05 on all linear layers,
no gradient checkpointing, AdamW lr 2e-4. Data: synthetic samples of exactly --seq tokens (random token ids;
the first quarter untrained), batch --batch. Speed does not depend on token values.

Rows, on the same samples:
  plain       the baseline done right: get_peft_model, then per step model(input_ids, attention_mask,
              labels, use_cache=False).loss.backward(), AdamW step, zero_grad (no KV cache built in training)
  lorafleet   train_adapter (length-grouped batches, masked token-sum loss, cosine schedule, clipping,
              metrics.jsonl), timed from its own per-step tokens/s
Each row runs --warmup untimed steps, then --steps timed ones; a repeat runs both rows, in alternating
order (the machine may be shared, so load drifts), --repeats times. The table gives min and median
tokens/s per row; the ratio is of medians. --json writes every step's time and the load average before
each run (on a 2-core machine a load above 2 means other work competed for the cores).

    python benchmarks/train_cpu.py --seq 256 --batch 2 --warmup 2 --steps 4 --repeats 3 --json FILE
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console
from rich.table import Table

from lorafleet.config import TrainConfig
from lorafleet.data.dataset import IGNORE_INDEX, REPORT_NAME, SCHEMA, PrepareReport, TokenStats, split_path
from lorafleet.models import EMBEDDED_DEFAULT, model_fingerprint, resolve_model, tokenizer_fingerprint

R, ALPHA, DROPOUT, LR = 16, 32, 0.05, 2e-4


def synthetic_samples(n: int, seq: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        ids = [rng.randrange(100, vocab) for _ in range(seq)]
        labels = [IGNORE_INDEX] * (seq // 4) + ids[seq // 4 :]
        samples.append((ids, labels))
    return samples


def write_dataset(folder: Path, model_dir: Path, samples: list, seq: int) -> None:
    folder.mkdir(parents=True)
    for split, rows in (("train", samples), ("eval", samples[:1])):
        table = {
            "input_ids": [s[0] for s in rows], "labels": [s[1] for s in rows], "source_file": ["synthetic"] * len(rows),
            "source_line": list(range(1, len(rows) + 1)), "num_tokens": [seq] * len(rows),
        }
        pq.write_table(pa.table(table, schema=SCHEMA), split_path(folder, split))
    trained = sum(seq - seq // 4 for _ in samples)
    report = PrepareReport(
        lines=len(samples), accepted=len(samples), rejected=0, duplicates=0, truncated=0, train=len(samples), eval=1,
        tokens=TokenStats(total=seq * len(samples), trained=trained, max=seq, p50=seq, p95=seq), model=EMBEDDED_DEFAULT,
        model_fingerprint=model_fingerprint(model_dir), tokenizer_fingerprint=tokenizer_fingerprint(model_dir),
        max_seq_length=seq, seed=0,
    )
    (folder / REPORT_NAME).write_text(report.model_dump_json())


def plain_peft(model_dir: Path, samples: list, batch: int, steps: int) -> list[float]:
    """Seconds of each step of the plain transformers + PEFT loop."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    lora = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    seconds = []
    for step in range(steps):
        rows = samples[step * batch : (step + 1) * batch]
        input_ids = torch.tensor([r[0] for r in rows])
        labels = torch.tensor([r[1] for r in rows])
        started = time.perf_counter()
        loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - started)
    return seconds


def lorafleet_loop(data: Path, out: Path, batch: int, seq: int, steps: int) -> list[float]:
    """Seconds of each step of `train_adapter`, from its own per-step metrics."""
    from lorafleet.train.trainer import train_adapter

    config = TrainConfig(
        model=EMBEDDED_DEFAULT, max_steps=steps, batch_size=batch, lr=LR, lora_r=R, lora_alpha=ALPHA,
        lora_dropout=DROPOUT, precision="fp32", gradient_checkpointing=False, seed=0,
    )
    train_adapter(data, out, config, show_progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [batch * seq / r["tokens_per_s"] for r in records if r["type"] == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    model_dir = resolve_model(EMBEDDED_DEFAULT).path
    steps = args.warmup + args.steps
    samples = synthetic_samples(args.batch * steps, args.seq, vocab=49152)
    step_tokens = args.batch * args.seq
    runs: dict[str, list[dict]] = {"plain": [], "lorafleet": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, model_dir, samples, args.seq)
        for repeat in range(args.repeats):
            order = ["plain", "lorafleet"] if repeat % 2 == 0 else ["lorafleet", "plain"]
            for which in order:
                load = os.getloadavg()[0]  # the machine may be shared: what else ran is part of the result
                if which == "plain":
                    seconds = plain_peft(model_dir, samples, args.batch, steps)
                else:
                    seconds = lorafleet_loop(data, Path(tmp) / f"adapter-{repeat}", args.batch, args.seq, steps)
                timed = seconds[args.warmup :]
                runs[which].append({"repeat": repeat, "step_seconds": seconds, "load_average_1min": load,
                                    "tokens_per_s": step_tokens * len(timed) / sum(timed)})
                print(f"repeat {repeat} {which}: {runs[which][-1]['tokens_per_s']:.1f} tokens/s (load {load:.1f})",
                      flush=True)
    stats = {k: {"min": min(r["tokens_per_s"] for r in v), "median": statistics.median(r["tokens_per_s"] for r in v)}
             for k, v in runs.items()}
    ratio = stats["lorafleet"]["median"] / stats["plain"]["median"]
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    table = Table(title=f"LoRA training on CPU — {EMBEDDED_DEFAULT}, fp32, r={R} all-linear, seq {args.seq}, "
                        f"batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps, {args.repeats} repeats")
    for column in ("loop", "median tokens/s", "min tokens/s", "runs (load)", "vs plain (medians)"):
        table.add_column(column)
    for key, label in (("plain", "plain transformers + PEFT (use_cache=False)"), ("lorafleet", "lorafleet train")):
        all_runs = ", ".join(f"{r['tokens_per_s']:.1f} ({r['load_average_1min']:.1f})" for r in runs[key])
        table.add_row(label, f"{stats[key]['median']:.1f}", f"{stats[key]['min']:.1f}", all_runs,
                      "1.00" if key == "plain" else f"{ratio:.2f}")
    console = Console()
    console.print(table)
    console.print(f"{date.today()} · {machine}")
    if args.json:
        args.json.write_text(json.dumps({"date": str(date.today()), "machine": machine, "args": vars(args) | {
            "json": str(args.json)}, "stats": stats, "ratio_of_medians": ratio, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
