"""A whole short QLoRA run as a user meets it, start-up included: `lorafleet prepare` + `lorafleet train` against
Unsloth on the same prepared data (issue 13's wall-clock figure).

The data: --chats synthetic chats of roughly 1,000-1,700 tokens with a learnable answer (the assistant repeats
the question's first words in reverse), written as OpenAI `messages` JSONL. The model: a folder given with
--model, or with --build-layers N a Llama-3.1-8B-shaped folder of random weights (the embedded model's
tokenizer beside them; its ids fit the larger vocabulary), saved once.

Rows, one after another on the same GPU:
- lorafleet: `lorafleet prepare CHATS --model M --out D --eval-fraction 0` then `lorafleet train --data D --model M --quantization
  nf4 --epochs 1 --batch-size 2 --lora-dropout 0` (dropout 0 as Unsloth's fast path), each timed from process
  start to exit; steps, per-step tokens/s and the training loop's own time come from `metrics.jsonl`.
- Unsloth: `train_gpu_unsloth.py --data D`, the same batches in the same order (lorafleet's length-grouped
  epoch 0), timed from process start (import, load, compile) to exit.

    python3 benchmarks/train_wallclock.py --out DIR (--model DIR | --build-layers 32) [--chats 400]
        [--quantization nf4] [--skip-unsloth]

Writes DIR/train_wallclock.json and prints a table. `--quantization none --skip-unsloth` with a small model
runs the lorafleet row on any machine (a check of the script, not a figure).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Common English words: about one token each (with the leading space) in a BPE vocabulary.
WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by "
         "word but not what all were we when your can said there use an each which she do how their if will up other "
         "about out many then them these so some her would make like him into time has look two more write go see "
         "number no way could people my than first water been call who oil its now find long down day did get come "
         "made may part over new sound take only little work know place year live me back give most very after thing "
         "our just name good sentence man think say great where help through much before line right too mean old any "
         "same tell boy follow came want show also around form three small set put end does another well large must "
         "big even such because turn here why ask went men read need land different home us move try kind hand picture "
         "again change off play spell air away animal house point page letter mother answer found study still learn").split()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, help="a local Hugging Face folder")
    ap.add_argument("--build-layers", type=int, default=0, help="build a Llama-3.1-8B-shaped folder of this many layers")
    ap.add_argument("--chats", type=int, default=400)
    ap.add_argument("--quantization", default="nf4")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--skip-unsloth", action="store_true")
    return ap.parse_args()


def write_chats(path: Path, n: int) -> None:
    """``n`` chats: a long question of random words, the answer its first 24 words reversed (learnable)."""
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(n):
            question = [rng.choice(WORDS) for _ in range(rng.randint(950, 1620))]
            answer = " ".join(reversed(question[:24]))
            f.write(json.dumps({"messages": [{"role": "user", "content": " ".join(question)},
                                             {"role": "assistant", "content": answer}]}) + "\n")


def build_model(dest: Path, layers: int) -> Path:
    """The 8B-shaped folder (bf16 random weights, seed 0) with the embedded model's tokenizer; reused if there."""
    if (dest / "config.json").exists():
        return dest
    from train_gpu_rows import build_bf16

    from lorafleet.models import load_tokenizer, resolve_model

    model = build_bf16(layers)
    model.save_pretrained(dest)
    load_tokenizer(resolve_model().path).save_pretrained(dest)
    del model
    return dest


def timed(command: list[str], log: Path) -> float:
    """Run ``command`` to completion (output to ``log``); its wall-clock seconds. A failure stops the benchmark."""
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed with exit status {code}; see {log}")
    return seconds


def lorafleet_row(args, model: Path, chats: Path) -> tuple[dict, Path]:
    lorafleet = [sys.executable, "-m", "lorafleet.cli"]
    data, artifact = args.out / "prepared", args.out / "adapter"
    # No eval split: Unsloth's row evaluates nothing either.
    prepare_s = timed(lorafleet + ["prepare", str(chats), "--model", str(model), "--out", str(data), "--eval-fraction", "0"],
                      args.out / "prepare.log")
    train_s = timed(lorafleet + ["train", "--data", str(data), "--out", str(artifact), "--model", str(model),
                                 "--quantization", args.quantization, "--epochs", "1", "--batch-size",
                                 str(args.batch_size), "--lora-dropout", "0", "--force"],
                    args.out / "train.log")
    steps = [json.loads(line) for line in (artifact / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["type"] == "train"]
    tokens = sum_tokens(steps)
    return dict(row="lorafleet", prepare_s=prepare_s, train_process_s=train_s, steps=len(steps), tokens=tokens,
                **step_figures(steps)), data


def sum_tokens(steps: list[dict]) -> int:
    return steps[-1]["tokens_seen"] if steps else 0


def step_figures(steps: list[dict]) -> dict:
    """What the per-step log says: the loop's own seconds, median tokens/s, and tokens/s over the first 30 steps
    (graph captures of new length buckets land there)."""
    rates = [s["tokens_per_s"] for s in steps]
    seen = [s["tokens_seen"] for s in steps]
    seconds = [(b - a) / r for a, b, r in zip([0] + seen[:-1], seen, rates, strict=True) if r > 0]
    loop_s, first_s = sum(seconds), sum(seconds[:30])
    return dict(loop_s=loop_s, median_tokens_per_s=statistics.median(rates) if rates else 0.0,
                first30_tokens_per_s=seen[min(30, len(seen)) - 1] / first_s if first_s else 0.0,
                loss_first=steps[0]["loss"] if steps else None, loss_last=steps[-1]["loss"] if steps else None)


def unsloth_row(args, model: Path, data: Path) -> dict:
    out = args.out / "unsloth.json"
    command = [sys.executable, str(Path(__file__).with_name("train_gpu_unsloth.py")), "--model", str(model),
               "--data", str(data), "--batch", str(args.batch_size), "--out", str(out)]
    process_s = timed(command, args.out / "unsloth.log")
    raw = json.loads(out.read_text())
    return dict(row=f"Unsloth {raw['unsloth']}", prepare_s=0.0, train_process_s=process_s, load_s=raw["load_s"],
                steps=len(raw["steps"]), tokens=sum_tokens(raw["steps"]), **step_figures(raw["steps"]))


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.model and not args.build_layers:
        sys.exit("give --model DIR or --build-layers N")
    model = args.model or build_model(args.out.parent / f"wallclock-llama8b-layers{args.build_layers}", args.build_layers)
    chats = args.out / "chats.jsonl"
    write_chats(chats, args.chats)
    rows = []
    row, data = lorafleet_row(args, model, chats)
    rows.append(row)
    if not args.skip_unsloth:
        rows.append(unsloth_row(args, model, data))
    report = dict(date=time.strftime("%Y-%m-%d"), args={k: str(v) for k, v in vars(args).items()}, rows=rows,
                  alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))
    (args.out / "train_wallclock.json").write_text(json.dumps(report, indent=1))
    print(f"{'row':20} {'prepare s':>9} {'train process s':>15} {'loop s':>7} {'steps':>5} {'median tok/s':>12} "
          f"{'first 30 tok/s':>14}")
    for r in rows:
        print(f"{r['row']:20} {r['prepare_s']:>9.1f} {r['train_process_s']:>15.1f} {r['loop_s']:>7.1f} "
              f"{r['steps']:>5} {r['median_tokens_per_s']:>12.0f} {r['first30_tokens_per_s']:>14.0f}")


if __name__ == "__main__":
    main()
