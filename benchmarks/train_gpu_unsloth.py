"""The Unsloth row of `train_gpu.py`, in a process of its own: `import unsloth` patches transformers and PEFT
for the whole process, so it never shares one with lorafleet's rows or the seed stack's.

Unsloth 2026.10.9 as its users run QLoRA: `FastLanguageModel.from_pretrained(load_in_4bit=True)` over the
Llama-3.1-8B-shaped weights that train_gpu.py builds (saved once to a folder: the same values as every other
row), `get_peft_model` with r=32, alpha 64, rsLoRA, all seven projections, dropout 0 (its fast path needs it),
`use_gradient_checkpointing="unsloth"` (its checkpointing with the layer inputs offloaded to host memory);
attention through SDPA (the GPU machine has neither xformers nor flash-attn); bitsandbytes' paged 8-bit AdamW
with the seed rows' learning rate and clipping. The data and steps are train_gpu.py's (`make_data`), one pass
of `batch` rows per step, as Unsloth's trainer runs it.

Memory: the peaks from the first training step on, warm-up included; loading and quantizing are not counted
(as for every row of train_gpu.py). Speed: the steps after the warm-up.

    python3 benchmarks/train_gpu_unsloth.py --model DIR --out FILE [--batch 2] [--seq 2048] [--steps 20]
        [--warmup 3] [--context-cap-s 0]
    python3 benchmarks/train_gpu_unsloth.py --model DIR --out FILE --data PREPARED [--batch 2]

Writes FILE (JSON: the row, and with --context-cap-s the longest batch-1 context that trained). With --data
(train_wallclock.py): one epoch over a `lorafleet prepare` folder's train split, in the batches and order
`lorafleet train` uses (length-grouped, seed 0), each padded to its longest row; a record per step.
"""

from __future__ import annotations

import os

for _name, _value in {"UNSLOTH_DISABLE_STATISTICS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                      "HF_DATASETS_OFFLINE": "1", "UNSLOTH_COMPILE_LOCATION": "/tmp/unsloth_compiled_cache"}.items():
    os.environ.setdefault(_name, _value)  # the GPU machine reaches no network

import unsloth  # noqa: E402,F401  (first: it patches transformers and PEFT as they are imported)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from train_gpu_rows import ALPHA, CLIP, LR, R, make_data  # noqa: E402

CONTEXT_MAX = 1 << 19  # max_seq_length when searching the longest context (Unsloth sizes its RoPE tables by it)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--context-cap-s", type=float, default=0.0, help="search the longest batch-1 context for "
                    "this many seconds (0: no search)")
    ap.add_argument("--data", type=Path, help="a prepared dataset folder: train one epoch over it")
    return ap.parse_args()


def load(model_dir: Path, max_seq_length: int):
    """Unsloth's model and adapter, the way its notebooks set them up (no trainer: the loop below)."""
    import bitsandbytes as bnb
    from unsloth import FastLanguageModel

    model, _tokenizer = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=max_seq_length,
                                                          dtype=torch.bfloat16, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                             target_modules=PROJECTIONS, bias="none", use_rslora=True,
                                             use_gradient_checkpointing="unsloth", random_state=1234,
                                             max_seq_length=max_seq_length)
    FastLanguageModel.for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, bnb.optim.PagedAdamW8bit(params, lr=LR, weight_decay=0.0)


def step(model, params, opt, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def timed_row(model, params, opt, args) -> dict:
    data = make_data(args.steps, args.batch, args.seq, model.config.vocab_size)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    losses, start = [], 0.0
    for i, (ids, labels) in enumerate(data):
        if i == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        losses.append(float(step(model, params, opt, ids, labels)))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.batch * args.seq * (args.steps - args.warmup)
    return dict(row="Unsloth 2026.10.9", batch=args.batch, micro_batch=args.batch, seq=args.seq, tokens_per_s=tokens / seconds,
                seconds=seconds, peak_allocated_gb=torch.cuda.max_memory_allocated() / 1e9,
                peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9, losses=losses, lora_dropout=0.0,
                checkpointing="unsloth (offloaded)", unsloth=unsloth.__version__)


def longest_context(model, params, opt, cap_s: float, vocab: int) -> tuple[int, int | None, list[dict]]:
    """train_gpu_context.py's search from 16384 tokens, one batch-1 step per attempt, within cap_s; returns
    (longest that trained, shortest that ran out of memory or None, the attempts)."""
    from train_gpu_context import search_longest

    log: list[dict] = []

    def attempt(seq: int) -> tuple[bool, float]:
        ids, labels = make_data(1, 1, seq, vocab)[0]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            step(model, params, opt, ids, labels)
            torch.cuda.synchronize()
            fits = True
        except torch.OutOfMemoryError:
            fits = False
        opt.zero_grad(set_to_none=True)
        del ids, labels
        torch.cuda.empty_cache()
        log.append(dict(seq=seq, fits=fits, seconds=time.perf_counter() - started,
                        peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9))
        print(json.dumps(log[-1]), flush=True)
        return fits, log[-1]["seconds"]

    good, bad = search_longest(attempt, 16384, cap_s)
    return good, bad, log


def prepared_epoch(model, params, opt, data_dir: Path, batch: int) -> list[dict]:
    """One epoch over the prepared train split in lorafleet's batches; a metrics.jsonl-like record per step."""
    import pyarrow.parquet as pq

    from lorafleet.config import TrainConfig
    from lorafleet.train.batching import epoch_batches

    table = pq.read_table(data_dir / "train.parquet", columns=["input_ids", "labels"]).to_pydict()
    lengths = [len(ids) for ids in table["input_ids"]]
    defaults = TrainConfig()
    records, seen = [], 0
    for indices in epoch_batches(lengths, batch, 1, defaults.seed, 0, defaults.length_group_window):
        width = max(lengths[i] for i in indices)
        ids = torch.zeros((len(indices), width), dtype=torch.long)
        labels = torch.full((len(indices), width), -100, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            ids[row, : lengths[i]] = torch.tensor(table["input_ids"][i])
            labels[row, : lengths[i]] = torch.tensor(table["labels"][i])
            mask[row, : lengths[i]] = 1
        started = time.perf_counter()
        loss = model(input_ids=ids.cuda(), attention_mask=mask.cuda(), labels=labels.cuda()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss)  # the step's end, as lorafleet's loop reads its loss
        tokens = sum(lengths[i] for i in indices)
        seen += tokens
        records.append(dict(type="train", step=len(records) + 1, loss=value, tokens_seen=seen,
                            tokens_per_s=tokens / (time.perf_counter() - started)))
    return records


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    model, params, opt = load(args.model, CONTEXT_MAX if args.context_cap_s > 0 else args.seq)
    load_s = time.perf_counter() - started
    if args.data:
        steps = prepared_epoch(model, params, opt, args.data, args.batch)
        args.out.write_text(json.dumps(dict(load_s=load_s, steps=steps, unsloth=unsloth.__version__)))
        return
    result = timed_row(model, params, opt, args) | dict(load_s=load_s)
    print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)
    if args.context_cap_s > 0:
        good, bad, log = longest_context(model, params, opt, args.context_cap_s, model.config.vocab_size)
        result |= dict(context=(good, bad), context_log=log)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
