"""Dropout on the LoRA path as one Triton kernel per pass, its mask never stored (CUDA only).

Used for the passes of a run with CUDA graphs (``graphs.py``), whose seeds are drawn on the device; an
eager run keeps torch's masks (the kernel alone measured slower, BENCHMARKS.md round 4). The plan turns
graphs off when ``kernels.dropout_problem`` finds the kernel wrong on the device and dropout is on.

The torch path (``fused_lora.keep_mask``) writes a whole (tokens, width) 0/1 mask with a seeded
generator, then multiplies: at the Llama-8B shape the H200 profile put that at ~0.7 ms per layer for
the masks plus ~1 ms of mask multiplies and adds (BENCHMARKS.md, round 4). Here the keep decision
is drawn in registers from Philox (``tl.rand4x(seed, counter)``, four elements per counter) wherever
it is needed:

* ``dropped(x, p, seed)`` = x where kept, 0 elsewhere (the forward's and grad_a's dropped input);
* ``add_dropped_(dx, t, p, seed)``: dx += t where kept (the input gradient's LoRA term), in place.

Element i is kept when its uniform draw is >= p: an independent Bernoulli(1 - p) mask per seed, i.e.
per LoRA module and pass, as PEFT's ``nn.Dropout`` draws (from another generator, as the torch path
does too). The same (seed, i) always gives the same decision, so backward sees forward's mask.
The seed is a Python int, or a one-element int64 CUDA tensor read by the kernel: that is how a
CUDA-graph replay (``graphs.py``) gets fresh masks, its seeds drawn on the device at each replay. The
1 / (1 - p) rescale stays on the small LoRA tensors (``fused_lora``); the kept values are unchanged,
and the add rounds once to the output dtype, as ``dx += t * mask`` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 2048


@triton.jit
def _drop_part(x_ptr, add_ptr, out_ptr, offsets, n, r, p, ADD: tl.constexpr):
    inside = offsets < n
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0)
    dropped = tl.where(r >= p, x, tl.zeros_like(x))
    if ADD:
        base = tl.load(add_ptr + offsets, mask=inside, other=0.0)
        result = (base.to(tl.float32) + dropped.to(tl.float32)).to(base.dtype)
    else:
        result = dropped
    tl.store(out_ptr + offsets, result, mask=inside)


@triton.jit(do_not_specialize=["seed", "p"])
def _dropout_kernel(x_ptr, add_ptr, out_ptr, n, p, seed, ADD: tl.constexpr, SEED_PTR: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr):
    # One Philox call gives four uniforms: counter c (one per element of the first quarter of the block)
    # decides the elements c, c + Q, c + 2Q and c + 3Q of the block, each from its own output.
    Q: tl.constexpr = BLOCK_SIZE // 4
    if SEED_PTR:
        seed = tl.load(seed)
    pid = tl.program_id(0)
    lane = tl.arange(0, Q)
    r0, r1, r2, r3 = tl.rand4x(seed, pid * Q + lane)
    start = pid * BLOCK_SIZE + lane
    _drop_part(x_ptr, add_ptr, out_ptr, start, n, r0, p, ADD)
    _drop_part(x_ptr, add_ptr, out_ptr, start + Q, n, r1, p, ADD)
    _drop_part(x_ptr, add_ptr, out_ptr, start + 2 * Q, n, r2, p, ADD)
    _drop_part(x_ptr, add_ptr, out_ptr, start + 3 * Q, n, r3, p, ADD)


Seed = int | Tensor  # a Python int, or a one-element int64 tensor on x's device


def _launch(x: Tensor, add: Tensor | None, out: Tensor, p: float, seed: Seed) -> None:
    n = x.numel()
    if n >= 2**31 - BLOCK:
        raise ValueError(f"dropout kernel: {n} elements is beyond its 32-bit index")
    grid = (triton.cdiv(n, BLOCK),)
    on_device = isinstance(seed, Tensor)
    if on_device and (seed.dtype != torch.int64 or seed.numel() != 1 or seed.device != x.device):
        raise ValueError("dropout kernel: a tensor seed must be one int64 element on the input's device")
    _dropout_kernel[grid](x, add if add is not None else x, out, n, float(p),
                          seed if on_device else int(seed) & (2**63 - 1),
                          ADD=add is not None, SEED_PTR=on_device, BLOCK_SIZE=BLOCK)


def device_seed(device: torch.device) -> Tensor:
    """A fresh dropout seed drawn on ``device`` by torch's default generator (safe inside CUDA-graph
    capture: each replay draws a new one)."""
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)


def dropped(x: Tensor, p: float, seed: Seed) -> Tensor:
    """x with the elements of the ``seed`` mask dropped (set to 0), no rescale; x contiguous on CUDA."""
    x = x.contiguous()
    out = torch.empty_like(x)
    _launch(x, None, out, p, seed)
    return out


def add_dropped_(dx: Tensor, t: Tensor, p: float, seed: Seed) -> Tensor:
    """dx += t where the ``seed`` mask keeps (contiguous, same shape); returns dx."""
    t = t.contiguous()
    if not dx.is_contiguous() or dx.shape != t.shape:
        raise ValueError("add_dropped_ needs a contiguous dx of t's shape")
    _launch(t, dx, dx, p, seed)
    return dx
