"""Benchmark: held-out quality of the triage task trained three ways on the embedded model, baseline in the same run.

The seed claims adapters keep about 98% of full fine-tuning's quality. Rows, on the same generated
data (lorafleet's ticket generator, one seed), the same prepared samples and the same dev split:

  base + instructions  the base model prompted with the format instructions (no training): the baseline
  lora                 lorafleet train with configs/triage.yaml (fp32 LoRA on CPU, the demo's recipe)
  full                 full fine-tuning: every weight trained, plain PyTorch loop, same batches and steps, one row
                       per learning rate in --full-lr (the LoRA recipe was searched, so the baseline gets a search too);
                       "vs full" compares against the best of them
  qlora                lorafleet train with the same config, base held in 4-bit NF4, bf16 compute (CUDA only)

Every row is scored the same way: transformers `generate`, greedy, batched, on the dev split's user
messages (vLLM cannot run on the GPU machine, so no row uses it), with lorafleet.eval's scoring. An
adapter is scored over the unquantized base in fp32 (how lorafleet serves it), the QLoRA one included.

    python benchmarks/quality.py --rows base,lora,full                 # CPU rows (this machine)
    python benchmarks/quality.py --rows base,lora,full,qlora --device cuda --gen-batch 32  # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from lorafleet.config import load_train_config
from lorafleet.data.prepare import PrepareOptions, prepare_dataset
from lorafleet.demo.ticket_files import write_ticket_data
from lorafleet.demo.triage import FORMAT_INSTRUCTIONS
from lorafleet.eval.cases import EvalCase, load_cases
from lorafleet.eval.report import CaseResult, ModelReport
from lorafleet.eval.scoring import model_report, score_answer
from lorafleet.models import EMBEDDED_DEFAULT, load_tokenizer, resolve_model
from lorafleet.train.batching import collate_padded, epoch_batches, load_samples

ROOT = Path(__file__).resolve().parents[1]


def generate_answers(model, tokenizer, conversations: list[list[dict]], device: str, batch: int, max_new_tokens: int) -> list[str]:
    """Greedy answers, batched with left padding (decoder-only models continue from the last token)."""
    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(conversations), batch):
        prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations[start : start + batch]]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def score(name: str, model, tokenizer, cases: list[EvalCase], system: str | None, args) -> ModelReport:
    model.eval()
    start = time.perf_counter()
    answers = generate_answers(model, tokenizer, [c.with_prompt(system, args.base_prompt_in) for c in cases], args.device, args.gen_batch, args.max_new_tokens)
    wall = time.perf_counter() - start
    results = [
        CaseResult(line=c.line, status="ok", answer=a, expected=c.expected, score=score_answer(a, c.expected, c.required))
        for c, a in zip(cases, answers)
    ]
    return model_report(name, system, results, wall)


def load_base(path: Path, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def train_adapter_row(row: str, prepared: Path, work: Path, args) -> tuple[Path, dict]:
    from lorafleet.train.trainer import train_adapter

    overrides = {"model": args.model, "max_steps": args.steps, "force": True}
    if row == "qlora":
        overrides |= {"quantization": "nf4", "precision": "bf16"}
    config = load_train_config(args.config, overrides)
    start = time.perf_counter()
    manifest = train_adapter(prepared, work / row, config)
    m = manifest.metrics
    return work / row, {"train_s": time.perf_counter() - start, "steps": m.steps, "train_loss": m.train_loss,
                        "eval_loss": m.eval_loss, "tokens_per_s": m.tokens_per_s, "config": config.model_dump(mode="json")}


def train_full(model, prepared: Path, lr: float, args) -> dict:
    """Full fine-tuning on the same length-grouped batches as lorafleet's loop, AdamW with warm-up and cosine decay."""
    config = load_train_config(args.config, {"model": args.model})
    samples = load_samples(prepared, "train")
    steps = args.steps or config.max_steps or math.ceil(len(samples) / config.batch_size) * config.epochs
    batches = [b for epoch in range(math.ceil(steps * config.batch_size / len(samples)) + 1)
               for b in epoch_batches([len(s.input_ids) for s in samples], config.batch_size, 1, config.seed, epoch, config.length_group_window)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, round(steps * config.warmup_ratio))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
    )
    torch.manual_seed(config.seed)
    model.train()
    start, tokens, loss = time.perf_counter(), 0, float("nan")
    for step in range(steps):
        batch = collate_padded([samples[i] for i in batches[step]], args.pad_id)
        batch = {k: v.to(args.device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        print(f"full step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    wall = time.perf_counter() - start
    return {"train_s": wall, "steps": steps, "train_loss": loss.item(), "tokens_per_s": tokens / wall, "lr": lr}


def row_result(report: ModelReport, training: dict | None) -> dict:
    return {
        "model": report.model, "dev": report.scored, "json_valid": report.rate(report.json_valid),
        "schema_valid": report.rate(report.schema_valid), "category": report.field_rate("category"),
        "priority": report.field_rate("priority"), "exact": report.rate(report.exact), "generate_s": report.wall_s,
        "confusion": [c.model_dump() for c in report.confusion], "training": training,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="base,lora,full", help="comma-separated: base, lora, full, qlora")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (qlora needs cuda)")
    parser.add_argument("--model", default=EMBEDDED_DEFAULT, help="base model: the embedded default or a local folder")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "triage.yaml")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps for every trained row (default: the config's)")
    parser.add_argument("--base-prompt-in", default="user", choices=["system", "user"],
                        help="where the base row's format instructions go (this small model follows them better in the user turn)")
    parser.add_argument("--full-lr", default="1e-4", help="learning rates of full fine-tuning, comma-separated: a row each")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--train", type=int, default=1000, help="training conversations generated")
    parser.add_argument("--dev", type=int, default=200, help="held-out tickets scored")
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="raw JSON results (default benchmarks/results/quality_<device>.json)")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    full_lrs = [float(lr) for lr in args.full_lr.split(",") if lr.strip()]
    console = Console()
    base_path = resolve_model(args.model).path
    tokenizer = load_tokenizer(base_path)
    if tokenizer.pad_token is None:  # batched generation pads; some tokenizer versions leave the GGUF's pad unset
        tokenizer.pad_token = tokenizer.eos_token
    args.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lorafleet-quality-") as tmp:
        work = Path(tmp)
        summary = write_ticket_data(work / "data", args.seed, args.train, args.dev)
        prepared = work / "prepared"
        prepare_dataset([work / "data" / f for f in summary.train_files], prepared,
                        PrepareOptions(model=args.model, max_seq_length=512, seed=args.seed, max_error_rate=1.0))
        cases = load_cases(work / "data" / "dev.jsonl")
        for row in rows:
            console.rule(row)
            if row == "base":
                report = score("base + instructions", load_base(base_path, args.device), tokenizer, cases, FORMAT_INSTRUCTIONS, args)
                results[row] = row_result(report, None)
            elif row in ("lora", "qlora"):
                from peft import PeftModel

                artifact, training = train_adapter_row(row, prepared, work, args)
                model = PeftModel.from_pretrained(load_base(base_path, args.device), artifact)
                results[row] = row_result(score(row, model, tokenizer, cases, None, args), training)
            elif row == "full":
                for lr in full_lrs:
                    name = "full" if len(full_lrs) == 1 else f"full@{lr:g}"
                    model = load_base(base_path, args.device)
                    training = train_full(model, prepared, lr, args)
                    results[name] = row_result(score(name, model, tokenizer, cases, None, args), training)
                    console.print(f"{name}: category {results[name]['category']:.1%}, JSON valid {results[name]['json_valid']:.1%}")
                continue
            else:
                parser.error(f"unknown row {row!r}")
            console.print(f"{row}: category {results[row]['category']:.1%}, JSON valid {results[row]['json_valid']:.1%}")
    print_table(results, console)
    write_results(results, args)


def print_table(results: dict[str, dict], console: Console) -> None:
    table = Table(title="triage quality on the held-out dev split (transformers generate, greedy)")
    for column in ("row", "JSON valid", "category", "priority", "exact", "train s", "vs best full (category)"):
        table.add_column(column, justify="right")
    full = max((r["category"] for row, r in results.items() if row.startswith("full")), default=None)
    for row, r in results.items():
        train_s = f"{r['training']['train_s']:.0f}" if r["training"] else "-"
        ratio = f"{r['category'] / full:.1%}" if full else "-"
        table.add_row(row, f"{r['json_valid']:.1%}", f"{r['category']:.1%}", f"{r['priority']:.1%}", f"{r['exact']:.1%}", train_s, ratio)
    console.print(table)


def write_results(results: dict[str, dict], args) -> None:
    out = args.out or ROOT / "benchmarks" / "results" / f"quality_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "quality", "date": date.today().isoformat(), "device": args.device,
        "machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "model": args.model,
        "seed": args.seed, "train_conversations": args.train, "dev_tickets": args.dev, "steps": args.steps,
        "torch": torch.__version__, "rows": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
