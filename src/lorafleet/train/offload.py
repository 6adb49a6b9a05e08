"""Whole-layer activation checkpointing with the layer input kept in pinned host memory.

Forward runs the layer without building a graph and copies its input to the host on a side stream
(asynchronously, so the copy overlaps the next layers' compute). Backward copies it back, recomputes the
layer with the same RNG state and autocast setting, and back-propagates through it. GPU memory then
holds one layer's activations at a time, not one input per layer: the basis of very long contexts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for host copies (created on first use, reused after)."""
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device)
    return _STREAMS[device]


class OffloadedLayerFunction(torch.autograd.Function):
    """``apply(run, hidden, anchor)``: returns ``run(hidden)``. ``anchor`` is an empty tensor that
    requires grad, so backward is reached even when nothing else entering the layer does (the LoRA
    parameters are used inside ``run``, not passed in)."""

    @staticmethod
    def forward(ctx, run: Callable[[Tensor], Tensor], hidden: Tensor, anchor: Tensor) -> Tensor:
        device = hidden.device
        stream = _copy_stream(device)
        host = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            host.copy_(hidden, non_blocking=True)
        hidden.record_stream(stream)  # keep its memory from reuse until the copy is done
        ctx.copied = stream.record_event()
        ctx.run, ctx.host, ctx.device = run, host, device
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(device)
        ctx.autocast = torch.is_autocast_enabled("cuda")
        ctx.autocast_dtype = torch.get_autocast_dtype("cuda")
        ctx.input_requires_grad = hidden.requires_grad
        with torch.no_grad():
            return ctx.run(hidden)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        torch.cuda.current_stream(ctx.device).wait_event(ctx.copied)
        hidden = ctx.host.to(ctx.device, non_blocking=True).requires_grad_(True)
        with torch.random.fork_rng(devices=[ctx.device]):
            torch.set_rng_state(ctx.cpu_rng)
            torch.cuda.set_rng_state(ctx.cuda_rng, ctx.device)
            with torch.enable_grad(), torch.autocast("cuda", dtype=ctx.autocast_dtype, enabled=ctx.autocast):
                out = ctx.run(hidden)
        torch.autograd.backward(out, grad_out)
        grad_in = hidden.grad if ctx.input_requires_grad else None
        ctx.host = None
        return None, grad_in, None
