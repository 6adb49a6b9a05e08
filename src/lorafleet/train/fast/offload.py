"""Whole-layer activation checkpointing with the layer input kept in pinned host memory.

Forward runs the layer without building a graph and copies its input to the host on a side stream
(asynchronously, so the copy overlaps the next layers' compute), in power-of-two blocks that the pinned
allocator does not round up. Backward copies it back, recomputes the
layer with the same RNG state and autocast setting, and back-propagates through it. GPU memory then
holds one layer's activations at a time, not one input per layer: the basis of very long contexts.
The side stream is made once per patched model (``patch.py``) and handed to every offloaded layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def power_of_two_parts(n: int) -> list[int]:
    """``n`` as a sum of distinct powers of two, largest first. torch's pinned host allocator rounds every
    block up to a power of two, so one block for a 286,720-token layer input (2.35 GB in bf16) took
    4 GB and 32 of them overran the H200 machine's host memory (BENCHMARKS.md, round 6); in these
    parts the input takes exactly its size."""
    return [1 << bit for bit in range(n.bit_length() - 1, -1, -1) if n >> bit & 1]


class OffloadedLayerFunction(torch.autograd.Function):
    """``apply(run, hidden, anchor, stream)``: returns ``run(hidden, False)``; backward calls ``run(hidden, True)``
    (``recomputing``: only that run's autograd graph is used, never its output). ``anchor`` is an empty tensor
    that requires grad, so backward is reached even when nothing else entering the layer does (the LoRA
    parameters are used inside ``run``, not passed in); ``stream`` is the side stream for host copies."""

    @staticmethod
    def forward(ctx, run: Callable[[Tensor], Tensor], hidden: Tensor, anchor: Tensor,
                stream: torch.cuda.Stream) -> Tensor:
        device = hidden.device
        flat = hidden.contiguous().view(-1)
        parts, start = [], 0
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for size in power_of_two_parts(flat.numel()):
                part = torch.empty(size, dtype=hidden.dtype, pin_memory=True)
                part.copy_(flat[start : start + size], non_blocking=True)
                parts.append(part)
                start += size
        flat.record_stream(stream)  # keep its memory from reuse until the copies are done
        ctx.copied = stream.record_event()
        ctx.run, ctx.host, ctx.device, ctx.shape = run, parts, device, hidden.shape
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(device)
        ctx.autocast = torch.is_autocast_enabled("cuda")
        ctx.autocast_dtype = torch.get_autocast_dtype("cuda")
        ctx.input_requires_grad = hidden.requires_grad
        with torch.no_grad():
            return ctx.run(hidden, False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        torch.cuda.current_stream(ctx.device).wait_event(ctx.copied)
        hidden = torch.empty(ctx.shape, dtype=ctx.host[0].dtype, device=ctx.device)
        flat, start = hidden.view(-1), 0
        for part in ctx.host:
            flat[start : start + part.numel()].copy_(part, non_blocking=True)
            start += part.numel()
        hidden.requires_grad_(True)
        with torch.random.fork_rng(devices=[ctx.device]):
            torch.set_rng_state(ctx.cpu_rng)
            torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            with torch.enable_grad(), torch.autocast("cuda", dtype=ctx.autocast_dtype, enabled=ctx.autocast):
                out = ctx.run(hidden, True)
        torch.autograd.backward(out, grad_out)
        grad_in = hidden.grad if ctx.input_requires_grad else None
        ctx.host = None
        return None, grad_in, None, None
