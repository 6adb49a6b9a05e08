"""QLoRA training on 2 GPUs of one host: lorafleet's data parallel path against one GPU and the seed's stack.

One run, three rows at the Llama-3.1-8B shape (random weights built on each GPU, NF4, r=32 all-linear, seq 2048,
the data and LoRA init of train_gpu_rows.py), each launched with torchrun, one process per GPU:

  seed-2       the seed's stack (row (a) of train_gpu.py: transformers + PEFT over bitsandbytes NF4, gradient
               checkpointing, bf16 autocast, paged 8-bit AdamW, 2 rows per GPU) under torch DDP on 2 GPUs;
  lorafleet-1  lorafleet's defaults (`lorafleet.train.fast.enable_speedups` with the default `speedups:`
               section) on 1 GPU, the same global batch of 4 rows (batch_size 2, grad_accum 2);
  lorafleet-2  the same on 2 GPUs, 2 rows per GPU: passes replayed from CUDA graphs on every GPU, the LoRA
               gradients summed once per step as one flat buffer (`FlatGradients`), as `lorafleet train` does.

Every row trains the same global batches (4 rows a step), so the losses are comparable; the dropout masks
differ between rows (p = 0.05), as in train_gpu.py. The lorafleet rows plan within the seed row's per-GPU
peak, as train_gpu.py's (b) rows plan within (a)'s. Memory: each GPU's peak over the whole timed row, warm-up
and graph capture included (reserved for graphed rows, whose pool is reserved between replays; allocated for
eager rows), the largest over the GPUs; model building and NF4 quantization are not counted.

    python3 benchmarks/train_gpu_multi.py --out DIR [--rows seed-2,lorafleet-1,lorafleet-2] [--steps 20]

Writes DIR/train_gpu_multi.json (raw, every rank's numbers) and prints a table with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as `lorafleet train` sets it

import torch  # noqa: E402
from train_gpu_rows import ALPHA, CLIP, DROPOUT, R, build_bf16, graphed_passes, make_data, quantize_nf4, setup_row  # noqa: E402

ROWS = {"seed-2": (2, "seed"), "lorafleet-1": (1, "lorafleet"), "lorafleet-2": (2, "lorafleet")}  # processes, kind
GLOBAL_BATCH = 4  # rows per optimizer step over all GPUs: 2 per GPU on 2 GPUs


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--worker", choices=["seed", "lorafleet"], help=argparse.SUPPRESS)  # set by the driver
    ap.add_argument("--key", default="", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)  # bytes per GPU; 0 = the default
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    failed: dict[str, int] = {}
    budget = 0  # per GPU, for the lorafleet rows: the seed row's peak (0 = the plan's default when it did not run)
    for key in args.rows.split(","):
        processes, kind = ROWS[key]
        for stale in args.out.glob(f"{key}.rank*.json"):
            stale.unlink()
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   __file__, "--worker", kind, "--key", key, "--out", str(args.out), "--layers", str(args.layers),
                   "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--budget", str(budget)]
        print(f"== {key}: {processes} process(es)", flush=True)
        started = time.perf_counter()
        code = subprocess.run(command).returncode
        if code != 0:  # the other rows still run; the exit status says a row failed
            failed[key] = code
            print(f"== {key} failed (exit status {code})", flush=True)
            continue
        ranks = [json.loads((args.out / f"{key}.rank{r}.json").read_text()) for r in range(processes)]
        results[key] = dict(ranks[0], peak_gb=max(r["peak_gb"] for r in ranks),
                            peak_allocated_gb=max(r["peak_allocated_gb"] for r in ranks),
                            peak_reserved_gb=max(r["peak_reserved_gb"] for r in ranks),
                            ranks=ranks, launch_s=round(time.perf_counter() - started, 1))
        if kind == "seed":
            budget = int(results[key]["peak_gb"] * 1e9)
    report = dict(device=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(), torch=torch.__version__,
                  date=time.strftime("%Y-%m-%d"), alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                  args={k: str(v) for k, v in vars(args).items()}, results=results, ratios=ratios(results),
                  failed=failed)
    (args.out / "train_gpu_multi.json").write_text(json.dumps(report, indent=1))
    print_table(report)
    if failed:
        sys.exit(f"rows failed: {failed}")


def ratios(res: dict[str, dict]) -> dict[str, float]:
    pairs = {"lorafleet-2 / lorafleet-1": ("lorafleet-2", "lorafleet-1"), "lorafleet-2 / seed-2": ("lorafleet-2", "seed-2"),
             "lorafleet-1 / seed-2": ("lorafleet-1", "seed-2")}
    return {name: res[a]["tokens_per_s"] / res[b]["tokens_per_s"] for name, (a, b) in pairs.items()
            if a in res and b in res}


def print_table(report: dict) -> None:
    res = report["results"]
    print(f"\n{report['gpus']}× {report['device']}  torch {report['torch']}  {report['date']}")
    print(f"{'row':12} {'GPUs':>4} {'micro':>5} {'recompute':>11} {'graphs':>6} {'tok/s':>8} {'peak GB/GPU':>11}")
    for key, row in res.items():
        print(f"{key:12} {row['world_size']:>4} {row['micro_batch']:>5} {row['recompute']:>11} {str(row['graphs']):>6} "
              f"{row['tokens_per_s']:>8.0f} {row['peak_gb']:>11.1f}")
    for name, value in report["ratios"].items():
        print(f"{name}: {value:.2f}x")
    for key, row in res.items():
        if "grad_all_reduce_ms" in row:
            print(f"{key}: one gradient all-reduce of {row['grad_bytes'] / 1e6:.0f} MB took {row['grad_all_reduce_ms']:.2f} ms")
    for key, row in res.items():
        print(f"loss ({key}): " + " ".join(f"{x:.4f}" for x in row["losses"]))
    keys = list(res)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            diff = max(abs(x - y) for x, y in zip(res[a]["losses"], res[b]["losses"], strict=True))
            print(f"max |loss({a}) - loss({b})| over {len(res[a]['losses'])} steps: {diff:.4f}")


def worker(args: argparse.Namespace) -> None:
    """One process of a row: build the model on this process's GPU, train, write this rank's numbers."""
    from lorafleet.train.distributed import init_distributed

    info = init_distributed()  # NCCL on several processes; nothing on one
    torch.cuda.set_device(info.local_rank)
    data = make_data(args.steps, GLOBAL_BATCH, args.seq, 128256)  # the same global batches on every process
    rows = GLOBAL_BATCH // info.world_size
    mine = [(ids[info.rank * rows:(info.rank + 1) * rows], labels[info.rank * rows:(info.rank + 1) * rows])
            for ids, labels in data]
    # The step's global trained-token count, known to every process without a collective, as in the loop.
    counts = [int((labels[:, 1:] != -100).sum()) for _, labels in data]
    model = build_bf16(args.layers)
    quantize_nf4(model)
    step = seed_steps if args.worker == "seed" else lorafleet_steps
    result = step(model, mine, counts, info, args)
    result |= dict(rank=info.rank, world_size=info.world_size, global_batch=GLOBAL_BATCH, seq=args.seq,
                   budget_gb=args.budget / 1e9)
    (args.out / f"{args.key}.rank{info.rank}.json").write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k not in ("losses", "plan")}), flush=True)
    if info.enabled:
        torch.distributed.destroy_process_group()


def timed(run_step, data, counts, warmup: int) -> tuple[list[float], float, int, int]:
    """(losses, seconds of the steps after warm-up, peak allocated, peak reserved over every step)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    losses, start = [], 0.0
    for step, (ids, labels) in enumerate(data):
        if step == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        losses.append(run_step(ids, labels, counts[step]))
    torch.cuda.synchronize()
    return losses, time.perf_counter() - start, torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()


def seed_steps(model, data, counts, info, args) -> dict:
    """The seed's stack under DDP: each process's mean loss, gradients averaged by DDP's hooks."""
    from torch.nn.parallel import DistributedDataParallel

    from lorafleet.train.distributed import all_reduce_sum

    peft, params, opt = setup_row(model, quantized=True, paged=True)
    # Every process built the same weights from the same seeds; init_sync=False skips broadcasting the NF4 base.
    ddp = DistributedDataParallel(peft, device_ids=[info.local_rank], init_sync=False) if info.enabled else peft

    def run_step(ids, labels, _count) -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = ddp(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad()
        return float(all_reduce_sum(loss.detach().float(), info)) / info.world_size  # rows hold equal token counts

    losses, seconds, allocated, reserved = timed(run_step, data, counts, args.warmup)
    return row_result(losses, seconds, allocated, reserved, args, micro=data[0][0].shape[0], recompute="transformers",
                      graphs=False, plan=None)


def lorafleet_steps(model, data, counts, info, args) -> dict:
    """`lorafleet train`'s step: passes (graphed) scaled by the global token count, gradients summed once."""
    from lorafleet.config import SpeedupConfig, TrainConfig
    from lorafleet.train.distributed import FlatGradients, all_reduce_sum, broadcast_parameters
    from lorafleet.train.fast import enable_speedups, hidden_state_loss_sum

    peft, params, opt = setup_row(model, quantized=True, paged=False)
    broadcast_parameters(params, info)
    grads = FlatGradients(params) if info.enabled else None  # before any pass, as the trainer builds it
    rows = data[0][0].shape[0]
    config = TrainConfig(batch_size=2, grad_accum=rows // 2, lora_r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT,
                         quantization="nf4", speedups=SpeedupConfig())
    torch.cuda.synchronize()
    fast = enable_speedups(peft, config, "bf16", info.world_size, args.seq, memory_budget=args.budget or None)
    if info.is_main:
        print(f"{args.key}: {fast.describe()}", flush=True)
    plan = fast.plan
    runner = graphed_passes(peft, params) if plan.cuda_graphs else None

    def run_step(ids, labels, count) -> float:
        scale = 1.0 / count
        total = torch.zeros((), dtype=torch.float64, device="cuda")
        for lo in range(0, ids.shape[0], plan.micro_batch):
            batch = {"input_ids": ids[lo:lo + plan.micro_batch], "labels": labels[lo:lo + plan.micro_batch]}
            if runner is not None:
                total += runner.run(batch, scale).double()
                continue
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss_sum, _ = hidden_state_loss_sum(peft, batch["input_ids"], batch["labels"])
            (loss_sum * scale).backward()
            total += loss_sum.detach().double()
        if grads is not None:
            grads.all_reduce(info)
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=runner is None and grads is None)
        return float(all_reduce_sum(total, info)) / count

    losses, seconds, allocated, reserved = timed(run_step, data, counts, args.warmup)
    result = row_result(losses, seconds, allocated, reserved, args, micro=plan.micro_batch, recompute=plan.recompute,
                        graphs=plan.cuda_graphs, plan=plan.summary(), replays=runner.replays if runner else 0)
    if info.enabled:  # after the timed steps: what one gradient all-reduce costs on this host's link
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            grads.all_reduce(info)
        torch.cuda.synchronize()
        result["grad_all_reduce_ms"] = (time.perf_counter() - start) / 10 * 1e3
        result["grad_bytes"] = sum(p.grad.numel() * p.grad.element_size() for p in params)
    return result


def row_result(losses, seconds, allocated, reserved, args, *, micro, recompute, graphs, plan, replays=0) -> dict:
    tokens = GLOBAL_BATCH * args.seq * (args.steps - args.warmup)
    peak = reserved if graphs else allocated  # a graph's pool is reserved, not allocated, between replays
    return dict(tokens_per_s=tokens / seconds, seconds=seconds, losses=losses, micro_batch=micro, recompute=recompute,
                graphs=graphs, replays=replays, peak_gb=peak / 1e9, peak_allocated_gb=allocated / 1e9,
                peak_reserved_gb=reserved / 1e9, plan=plan)


if __name__ == "__main__":
    main()
