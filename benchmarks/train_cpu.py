"""Benchmark: LoRA training tokens/s on CPU, lorafleet's loop versus plain transformers + PEFT, same data.

Model: the embedded SmolLM2-135M-Instruct, fp32, LoRA r=16 / alpha 32 on all linear layers,
no gradient checkpointing, AdamW lr 2e-4. Data: synthetic samples of exactly --seq tokens (random
token ids; the first quarter untrained), batch --batch. Speed does not depend on token values.

Rows, in one run on the same samples:
  plain PEFT   get_peft_model + model(input_ids, labels=...).loss.backward() + AdamW, a bare Python loop
  lorafleet    train_adapter (length-grouped batches, own masked loss, cosine schedule, clipping, metrics)
Each row: --warmup steps untimed, then --steps timed; tokens/s counts input tokens of timed steps.

    .venv/bin/python benchmarks/train_cpu.py --seq 512 --batch 2 --steps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import random
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


def plain_peft(model_dir: Path, samples: list, batch: int, warmup: int, steps: int) -> float:
    """The baseline: tokens/s of a bare transformers + PEFT loop."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    timed_tokens, timed_s = 0, 0.0
    for step in range(warmup + steps):
        rows = samples[step * batch : (step + 1) * batch]
        input_ids = torch.tensor([r[0] for r in rows])
        labels = torch.tensor([r[1] for r in rows])
        started = time.perf_counter()
        loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= warmup:
            timed_s += time.perf_counter() - started
            timed_tokens += input_ids.numel()
    return timed_tokens / timed_s


def lorafleet_loop(data: Path, out: Path, batch: int, warmup: int, steps: int) -> float:
    """tokens/s of `train_adapter`, from its own per-step metrics (steps after the warm-up)."""
    from lorafleet.train.trainer import train_adapter

    config = TrainConfig(
        model=EMBEDDED_DEFAULT, max_steps=warmup + steps, batch_size=batch, lr=2e-4, lora_r=16, lora_alpha=32,
        precision="fp32", gradient_checkpointing=False, seed=0,
    )
    train_adapter(data, out, config, show_progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["type"] == "train"][warmup:]
    tokens = sum(batch * SEQ for _ in timed)
    seconds = sum(batch * SEQ / r["tokens_per_s"] for r in timed)
    return tokens / seconds


SEQ = 512


def main() -> None:
    global SEQ
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-repeat", dest="repeat", action="store_false", help="one run per row instead of A-B-B-A")
    args = parser.parse_args()
    SEQ = args.seq
    model_dir = resolve_model(EMBEDDED_DEFAULT).path
    samples = synthetic_samples(args.batch * (args.warmup + args.steps), args.seq, vocab=49152)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_dataset(data, model_dir, samples, args.seq)
        # A-B-B-A order: the machine is shared, so load drifts; each row is the mean of its two runs.
        runs: dict[str, list[float]] = {"plain": [], "ours": []}
        for i, which in enumerate(["plain", "ours", "ours", "plain"][: 4 if args.repeat else 2]):
            if which == "plain":
                runs[which].append(plain_peft(model_dir, samples, args.batch, args.warmup, args.steps))
            else:
                runs[which].append(lorafleet_loop(data, Path(tmp) / f"adapter-{i}", args.batch, args.warmup, args.steps))
        baseline, ours = (sum(v) / len(v) for v in (runs["plain"], runs["ours"]))

    table = Table(title=f"LoRA training on CPU — {EMBEDDED_DEFAULT}, fp32, r=16 all-linear, seq {args.seq}, batch {args.batch}")
    for column in ("loop", "tokens/s (runs)", "ratio"):
        table.add_column(column)
    table.add_row("plain transformers + PEFT", f"{baseline:.1f}  ({', '.join(f'{x:.1f}' for x in runs['plain'])})", "1.00")
    table.add_row("lorafleet train", f"{ours:.1f}  ({', '.join(f'{x:.1f}' for x in runs['ours'])})", f"{ours / baseline:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"{date.today()} · {platform.processor() or platform.machine()} · {torch.get_num_threads()} threads · torch {torch.__version__} · "
        f"{args.warmup} warm-up + {args.steps} timed steps each"
    )


if __name__ == "__main__":
    main()
