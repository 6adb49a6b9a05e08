"""The longest batch-1 context that trains, for `train_gpu.py --context-search / --context-probe`.

One attempt = one full training step (forward, backward, optimizer) at batch 1. lorafleet's attempts use
the plan `lorafleet train` would make with its default budget (allocated + 90% of free), here with
`frozen_bf16` on and eager passes (no CUDA graphs), as every context figure in BENCHMARKS.md was measured;
`--context-exact` plans them with `lorafleet train`'s defaults instead (frozen_bf16 off).
"""

from __future__ import annotations

import json
import time

import torch
from train_gpu_rows import make_data, setup_row, speed_up, teardown_row, train_steps


def fits(model, fast: bool, seq: int, exact: bool = False) -> tuple[bool, float, float, object]:
    """Does one batch-1 training step at ``seq`` fit? Returns (fits, seconds, peak GB, model)."""
    peft, params, opt = setup_row(model, True)
    path = speed_up(peft, True, 1, seq, None, frozen_bf16=not exact, cuda_graphs=False, triton_rope=exact,
                    paged_optimizer=True) if fast else None
    data = make_data(1, 1, seq, 128256)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    ok = True
    try:
        train_steps(peft, params, opt, data, 1, fast, 0)
    except torch.OutOfMemoryError:
        ok = False
    seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated() / 1e9
    opt.zero_grad(set_to_none=True)
    del opt, params, data
    return ok, seconds, peak, teardown_row(peft, path)


def search_longest(attempt, start: int, cap_s: float) -> tuple[int, int | None]:
    """Doubling from ``start`` then bisection (to 1/16 of the gap) within ``cap_s`` seconds; ``attempt(seq)``
    returns (fits, seconds). An attempt predicted (quadratic in seq from the last one that fit) to overrun
    the cap is not started. Returns (longest that fit, shortest that failed or None if never reached)."""
    good, bad, seq, t0, last = 0, None, start, time.perf_counter(), (start, 1.0)
    while True:
        predicted = last[1] * (seq / last[0]) ** 2
        if time.perf_counter() - t0 + predicted > cap_s:
            break
        ok, seconds = attempt(seq)
        if ok:
            good, last = seq, (seq, seconds)
        else:
            bad = seq
        if bad is None:
            seq *= 2
        elif bad - good <= max(1024, bad // 16):
            break
        else:
            seq = (good + bad) // 2 // 1024 * 1024
    return good, bad


def longest_context(model, fast: bool, start: int, cap_s: float, log: list, exact: bool = False):
    """``search_longest`` over lorafleet's (``fast``) or the seed stack's batch-1 steps; each attempt goes
    into ``log``. Returns (longest that fit, shortest that failed or None, model)."""

    def attempt(seq: int) -> tuple[bool, float]:
        nonlocal model
        ok, seconds, peak, model = fits(model, fast, seq, exact)
        log.append(dict(fast=fast, exact=exact, seq=seq, fits=ok, seconds=seconds, peak_gb=peak))
        print(json.dumps(log[-1]), flush=True)
        return ok, seconds

    good, bad = search_longest(attempt, start, cap_s)
    return good, bad, model
