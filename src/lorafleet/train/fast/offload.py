"""Whole-layer activation checkpointing with the layer input kept in pinned host memory.

Forward runs the layer without building a graph and copies its input to the host on a side stream
(asynchronously, so the copy overlaps the next layers' compute). Backward copies it back, recomputes the
layer (with the same RNG state and autocast setting when the layer draws random numbers) and
back-propagates through it. GPU memory then holds one layer's activations at a time, not one input per
layer: the basis of very long contexts and of the least-memory plan.

Each layer copies into a ``HostStash``: pinned buffers made once, at the first pass, for the longest pass the
plan allows, and reused by every pass after it. A pass replayed from a CUDA graph (``graphs.py``) copies to
and from the addresses its capture recorded, so those buffers must outlive the graphs and never move; a layer
that draws no random numbers saves no RNG state, which a capture could not read. The copies run on the side
stream of one ``HostCopies`` per patched model (``patch.py``), handed to every offloaded layer.
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


class HostStash:
    """Pinned host memory for one layer's input: ``capacity_tokens`` rows of the residual stream, allocated
    at the first ``take`` (when the width and dtype are known) and kept while the layer lives."""

    def __init__(self, capacity_tokens: int):
        self.capacity_tokens = capacity_tokens
        self.parts: list[Tensor] = []

    def take(self, tokens: int, width: int, dtype: torch.dtype) -> list[Tensor]:
        """Host tensors covering ``tokens * width`` elements of ``dtype``, in order (views of the buffers)."""
        if tokens > self.capacity_tokens:
            raise ValueError(f"a pass of {tokens} tokens is longer than the {self.capacity_tokens} the plan made "
                             "room for in host memory")
        if not self.parts or self.parts[0].dtype != dtype or sum(p.numel() for p in self.parts) < tokens * width:
            self.parts = [torch.empty(n, dtype=dtype, pin_memory=True)
                          for n in power_of_two_parts(self.capacity_tokens * width)]
        views, left = [], tokens * width
        for part in self.parts:
            if left == 0:
                break
            views.append(part[: min(left, part.numel())])
            left -= views[-1].numel()
        return views


class HostCopies:
    """The side stream that copies layer inputs to the host, and the copies still in flight.

    A copied input is held here, not marked with ``record_stream``, until the compute stream has waited for its
    copy (``settle``, at the next offloaded layer or the first backward): freed on the compute stream after
    that wait, its memory is safe to reuse at once. torch's allocator defers the free of a block marked with
    ``record_stream`` to the end of a CUDA graph capture, which would keep every layer's input of a captured
    pass in the graphs' pool at once."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device)
        self.pending: list[tuple[Tensor, torch.cuda.Event]] = []

    def start(self, source: Tensor, parts: list[Tensor]) -> torch.cuda.Event:
        """Copy the flat ``source`` into the host ``parts`` after the compute stream's work so far; returns the
        event that marks the copy done."""
        self.settle()
        self.stream.wait_stream(torch.cuda.current_stream(source.device))
        start = 0
        with torch.cuda.stream(self.stream):
            for part in parts:
                part.copy_(source[start : start + part.numel()], non_blocking=True)
                start += part.numel()
        done = self.stream.record_event()
        self.pending.append((source, done))
        return done

    def settle(self) -> None:
        """The current stream waits for every copy in flight; their sources are let go."""
        for source, done in self.pending:
            torch.cuda.current_stream(source.device).wait_event(done)
        self.pending.clear()


class OffloadedLayerFunction(torch.autograd.Function):
    """``apply(run, hidden, anchor, copies, stash, restore_rng)``: returns ``run(hidden, False)``; backward calls
    ``run(hidden, True)`` (``recomputing``: only that run's autograd graph is used, never its output).
    ``anchor`` is an empty tensor that requires grad, so backward is reached even when nothing else entering
    the layer does (the LoRA parameters are used inside ``run``, not passed in); ``copies`` copies the input
    to the layer's ``stash``; ``restore_rng``: the layer draws random numbers (dropout), so the recomputation
    restores the RNG state forward saw."""

    @staticmethod
    def forward(ctx, run: Callable[[Tensor, bool], Tensor], hidden: Tensor, anchor: Tensor,
                copies: HostCopies, stash: HostStash, restore_rng: bool) -> Tensor:
        device = hidden.device
        flat = hidden.contiguous().view(-1)
        parts = stash.take(flat.numel() // hidden.shape[-1], hidden.shape[-1], hidden.dtype)
        ctx.copied = copies.start(flat, parts)
        ctx.copies, ctx.run, ctx.host, ctx.device, ctx.shape = copies, run, parts, device, hidden.shape
        ctx.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device)) if restore_rng else None
        ctx.autocast = torch.is_autocast_enabled("cuda")
        ctx.autocast_dtype = torch.get_autocast_dtype("cuda")
        ctx.input_requires_grad = hidden.requires_grad
        with torch.no_grad():
            return ctx.run(hidden, False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        ctx.copies.settle()
        torch.cuda.current_stream(ctx.device).wait_event(ctx.copied)
        hidden = torch.empty(ctx.shape, dtype=ctx.host[0].dtype, device=ctx.device)
        flat, start = hidden.view(-1), 0
        for part in ctx.host:
            flat[start : start + part.numel()].copy_(part, non_blocking=True)
            start += part.numel()
        hidden.requires_grad_(True)
        with torch.random.fork_rng(devices=[ctx.device], enabled=ctx.rng is not None):
            if ctx.rng is not None:
                torch.set_rng_state(ctx.rng[0])
                torch.cuda.set_rng_state(ctx.rng[1], ctx.device)
            with torch.enable_grad(), torch.autocast("cuda", dtype=ctx.autocast_dtype, enabled=ctx.autocast):
                out = ctx.run(hidden, True)
        torch.autograd.backward(out, grad_out)
        grad_in = hidden.grad if ctx.input_requires_grad else None
        ctx.host = None
        return None, grad_in, None, None, None, None
