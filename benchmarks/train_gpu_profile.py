"""Per-kernel CUDA profile of training steps, for `train_gpu.py --profile`.

Runs a few warm steps, then profiles steps under ``torch.profiler`` (CPU + CUDA activities) and reports
(1) the top kernels by total CUDA time per step, (2) the aten ops that launched them (self device time,
so each kernel counts once, under the innermost op) and (3) a per-category summary: matmul, NF4
dequantization, dropout/RNG, attention, Triton norm/SwiGLU, elementwise, copies/casts, optimizer, other.
Categories are matched on kernel names (cuBLAS/CUTLASS/nvjet gemms, bitsandbytes kDequantize, torch's
distribution kernels, flash/fmha, Liger's Triton kernels, torch elementwise/reduce kernels).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

CATEGORIES = [  # first match wins; matched on the lower-cased kernel name
    ("nf4_dequant", r"dequant|kdequantize|nf4_kernel"),
    ("optimizer", r"optimizer|adam|kpreconditionoptimizer|koptimizer"),
    ("attention", r"flash|fmha|attention|sdpa|mha|efficient"),
    ("dropout_rng", r"bernoulli|philox|distribution|uniform|curand|rand|dropout_kernel"),
    ("triton_norm_swiglu", r"rms_norm|swiglu|_rms|liger|silu_mul|_mask"),
    ("loss", r"cross_entropy|log_softmax|nll"),
    ("matmul", r"gemm|cutlass|nvjet|sm90_|sm80_|xmma|cublas|gemv|splitk|matmul"),
    ("copies_casts", r"memcpy|memset|copy|cat_|catarray|fill"),
    ("elementwise", r"elementwise|vectorized|unrolled|reduce|foreach|pointwise|triton_"),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def _device_us(evt, self_time: bool) -> float:
    """Device time in µs (torch renamed cuda_* to device_*; a kernel's own event may carry either total)."""
    names = ("self_device_time_total", "self_cuda_time_total") if self_time else \
        ("device_time_total", "cuda_time_total", "self_device_time_total", "self_cuda_time_total")
    return max([float(getattr(evt, n)) for n in names if hasattr(evt, n)] or [0.0])


def profile_steps(step, warm: int, steps: int, layers: int, label: str, out: Path | None) -> dict:
    """``step()`` runs one optimizer step. Returns (and writes as JSON under ``out``) the profile summary."""
    from kernels_gpu import eager_ms
    from torch.profiler import ProfilerActivity, profile

    step_ms = eager_ms(step, steps, warm)  # unprofiled wall time per step
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    kernels, ops = [], []
    for evt in averages:
        is_device = "cuda" in str(getattr(evt, "device_type", "")).lower()
        if is_device:
            kernels.append(dict(name=evt.key[:200], category=category(evt.key), calls=evt.count / steps,
                                ms=_device_us(evt, False) / 1e3 / steps))
        else:
            ms = _device_us(evt, True) / 1e3 / steps
            if ms > 0:
                ops.append(dict(name=evt.key, calls=evt.count / steps, ms=ms))
    kernels.sort(key=lambda k: -k["ms"])
    ops.sort(key=lambda k: -k["ms"])
    cats: dict[str, float] = {}
    for k in kernels:
        cats[k["category"]] = cats.get(k["category"], 0.0) + k["ms"]
    total = sum(cats.values())
    summary = dict(label=label, layers=layers, steps=steps, step_ms=step_ms, kernel_ms_per_step=total,
                   categories=dict(sorted(cats.items(), key=lambda kv: -kv[1])),
                   kernels=kernels[:60], ops=ops[:40])
    print(f"\n== profile {label}: {layers} layers, {step_ms:.1f} ms/step wall, {total:.1f} ms/step of kernels")
    print("top kernels (ms/step, calls/step, category):")
    for k in kernels[:30]:
        print(f"  {k['ms']:8.2f} {k['calls']:6.0f}  {k['category']:18} {k['name'][:150]}")
    print("top aten ops by self CUDA time (ms/step, calls/step):")
    for o in ops[:20]:
        print(f"  {o['ms']:8.2f} {o['calls']:6.0f}  {o['name'][:100]}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"profile_{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_summaries(summaries: list[dict]) -> None:
    """The per-category table of every profiled row, ms per step and per layer (printed last)."""
    cats = sorted({c for s in summaries for c in s["categories"]},
                  key=lambda c: -max(s["categories"].get(c, 0.0) for s in summaries))
    print("\nprofile summary: ms per step (ms per layer)")
    print(f"{'category':20}" + "".join(f"{s['label'][:24]:>26}" for s in summaries))
    for c in cats + ["TOTAL kernels", "wall step"]:
        cells = []
        for s in summaries:
            v = {"TOTAL kernels": s["kernel_ms_per_step"], "wall step": s["step_ms"]}.get(c, s["categories"].get(c, 0.0))
            cells.append(f"{v:9.1f} ({v / s['layers']:6.2f})")
        print(f"{c:20}" + "".join(f"{cell:>26}" for cell in cells))


def profile_rows(model, data, args) -> list[dict]:
    """``--profile``: (a) and ``lorafleet train``'s exact defaults as planned within (a)'s peak (CUDA graphs at
    micro-batch 1 at the 8B shape), at dropout 0.05 and 0, without the RoPE kernel and without graphs, each 2 warm + ``--profile-steps`` profiled steps. Kernels replayed
    from a CUDA graph are listed like launched ones (CUPTI traces graph nodes)."""
    from train_gpu_rows import graphed_passes, setup_row, speed_up, teardown_row, train_steps

    specs = [("a", False, 0.05, {}), ("b_exact", True, 0.05, {}), ("b_exact_d0", True, 0.0, {}),
             ("b_exact_norope", True, 0.05, {"triton_rope": False}), ("b_exact_eager", True, 0.05, {"cuda_graphs": False})]
    summaries = []
    budget = None  # the (b) rows plan within (a)'s peak, as train_gpu.py's (b) rows do
    for label, fast, dropout, switches in specs:
        peft, params, opt = setup_row(model, True, dropout=dropout)
        batch, seq = data[0][0].shape
        path, micro, runner = None, batch, None
        if fast:
            path = speed_up(peft, True, batch, seq, budget, dropout, frozen_bf16=False, **switches)
            print(f"{label}: {path.describe()}", flush=True)
            micro = path.plan.micro_batch
            runner = graphed_passes(peft, params) if path.plan.cuda_graphs else None
        it = iter(range(10**6))
        step = lambda: train_steps(peft, params, opt, [data[next(it) % len(data)]], micro, fast, 1,  # noqa: E731
                                   runner)
        torch.cuda.reset_peak_memory_stats()
        summary = profile_steps(step, 2, args.profile_steps, args.layers, label, args.out / "profile")
        summary["peak_gb"] = torch.cuda.max_memory_reserved() / 1e9
        if not fast:
            budget = torch.cuda.max_memory_allocated()
        print(f"peak reserved {summary['peak_gb']:.2f} GB", flush=True)
        summaries.append(summary)
        del opt, params, runner
        model = teardown_row(peft, path)
    return summaries
