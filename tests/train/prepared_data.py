"""Prepared datasets for train tests, built directly through the dataset contract.

`write_prepared` tokenizes chat conversations with the model's own chat template and marks the
assistant turns as trained (prefix rendering: tokens between "prompt so far + generation prompt"
and "prompt including this assistant turn"), then writes train/eval parquet files with `SCHEMA`
and a `PrepareReport` carrying the model's fingerprints — what `lorafleet prepare` produces.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from lorafleet.config import TrainConfig
from lorafleet.data.dataset import IGNORE_INDEX, REPORT_NAME, SCHEMA, PrepareReport, TokenStats, split_path
from lorafleet.models import load_tokenizer, model_fingerprint, tokenizer_fingerprint


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """`n` short arithmetic chats: learnable patterns so a few steps lower the loss."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        chat = [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
        if rng.random() < 0.5:
            chat = [{"role": "system", "content": "You are a calculator."}] + chat
        chats.append(chat)
    return chats


def tokenize_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """input_ids of the templated chat and labels that train only the assistant turns."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True, return_dict=False))
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True, return_dict=False))
        labels[start:end] = ids[start:end]
    return list(ids), labels


def write_prepared(out: Path, model_dir: Path, train_chats: list, eval_chats: list, max_seq_length: int = 512) -> Path:
    """Write a prepared-dataset folder for `model_dir` from chat lists; returns `out`."""
    tokenizer = load_tokenizer(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    lengths, trained = [], 0
    for split, chats in (("train", train_chats), ("eval", eval_chats)):
        rows = {name: [] for name in SCHEMA.names}
        for line, chat in enumerate(chats, start=1):
            ids, labels = tokenize_chat(tokenizer, chat)
            rows["input_ids"].append(ids)
            rows["labels"].append(labels)
            rows["source_file"].append(f"{split}.jsonl")
            rows["source_line"].append(line)
            rows["num_tokens"].append(len(ids))
            lengths.append(len(ids))
            trained += sum(1 for x in labels if x != IGNORE_INDEX)
        pq.write_table(pa.table(rows, schema=SCHEMA), split_path(out, split))
    ordered = sorted(lengths)
    report = PrepareReport(
        lines=len(lengths), accepted=len(lengths), rejected=0, duplicates=0, truncated=0,
        train=len(train_chats), eval=len(eval_chats),
        tokens=TokenStats(total=sum(lengths), trained=trained, max=max(lengths), p50=ordered[len(ordered) // 2], p95=ordered[int(len(ordered) * 0.95)]),
        model=str(model_dir), model_fingerprint=model_fingerprint(model_dir), tokenizer_fingerprint=tokenizer_fingerprint(model_dir),
        max_seq_length=max_seq_length, seed=0,
    )
    (out / REPORT_NAME).write_text(report.model_dump_json(indent=2))
    return out


def tiny_config(tiny_model: Path, **overrides) -> TrainConfig:
    """A config that trains the tiny model visibly in a few CPU steps."""
    values = dict(
        model=str(tiny_model), lr=1e-2, lora_r=8, lora_alpha=16, batch_size=4, epochs=1,
        gradient_checkpointing=False, warmup_ratio=0.0, seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_metrics(artifact: Path) -> list[dict]:
    return [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
