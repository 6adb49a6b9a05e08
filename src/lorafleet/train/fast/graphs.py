"""One forward + backward pass of the training loop as a CUDA graph, captured per batch shape.

The H200 profile (BENCHMARKS.md, round 4) showed the GPU idle for 30-50% of a QLoRA step: a Llama
layer's LoRA linears, NF4 dequantizations, norms and dropout masks are a few hundred kernels, and the
host takes longer to launch them than the GPU to run them, most of all at micro-batch 1. A CUDA graph
records every kernel of a pass once and replays them with one launch.

``PassGraphs.run(batch, scale)`` does forward + backward of ``loss_fn(batch) * scale``. A batch shape
runs eagerly until it has been seen ``capture_after`` times (those eager passes are the warm-up that
compiles Triton kernels and sets up cuBLAS), then it is captured, and from then on each pass with that
shape copies its tensors into the graph's static inputs and replays. What makes a pass capturable:

* no host syncs: the loss count stays a tensor, the head's loss is ``linear_ce.py``, not Liger's;
* dropout seeds drawn on the device (the plan's ``cuda_graphs`` builds the fused layers with
  ``device_seeds``): a host seed would be frozen into the graph and every replay would drop the same
  elements; the eager passes draw them the same way, so both paths compute the same function;
* gradients accumulate into ``.grad`` tensors allocated before capture (the replay adds into the same
  memory), so callers zero them in place (``zero_grad(set_to_none=False)``), never drop them;
* no autograd graph outlives its pass: autograd ties each parameter's gradient-accumulation node to
  the stream it was made on, and a node left over from an eager pass on the default stream breaks
  the capture (which runs on a side stream);
* one memory pool and one capture stream shared by every shape's graph (the allocator reuses a block
  only on the stream it was made for): a graph's intermediates are dead once its replay is done (its
  loss is copied out right away), so the pool is as large as the largest pass.

Same results: a replay runs the kernels the eager pass ran, on the same inputs. Not captured: the
optimizer step, gradient clipping and evaluation (eager, between replays). Whether graphs run at all
is the plan's decision (``plan.py``: no recompute or offload without dropout, no loss scaling, no
packing, ...); on several processes the gradients are summed after the passes, outside the graphs
(``train/distributed.py``).

Memory: before a capture the allocator's cached blocks are handed back (``torch.cuda.empty_cache``), so
the eager warm-up passes' blocks and the graph's private pool are not both held at the peak.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lorafleet.train.fast.buckets import MAX_GRAPHS

log = logging.getLogger(__name__)

LossFn = Callable[[dict[str, Tensor]], Tensor]  # a pass's summed loss (0-dim), its autograd graph attached
ShapeKey = tuple


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]  # static: each pass copies its batch in
    scale: Tensor  # static 0-dim fp32: the loss multiplier of this pass
    loss: Tensor  # static 0-dim: the pass's loss sum, overwritten by each replay


def shape_key(batch: dict[str, Tensor]) -> ShapeKey:
    return tuple((name, tuple(t.shape), t.dtype) for name, t in sorted(batch.items()))


class PassGraphs:
    """Forward + backward passes, eager for the first ``capture_after`` uses of a shape, then replayed
    from a CUDA graph (at most ``max_graphs`` shapes; further shapes stay eager)."""

    def __init__(self, loss_fn: LossFn, params: list[Tensor], capture_after: int = 2, max_graphs: int = MAX_GRAPHS):
        if capture_after < 1:
            raise ValueError("capture_after must be at least 1: a shape is warmed up eagerly before capture")
        self.loss_fn = loss_fn
        self.params = [p for p in params if p.requires_grad]
        self.capture_after = capture_after
        self.max_graphs = max_graphs
        self.graphs: dict[ShapeKey, _Captured] = {}
        self.seen: Counter[ShapeKey] = Counter()
        self.replays = 0
        self.eager = 0
        self.failure: str | None = None  # a capture failed: every pass stays eager from then on
        self._pool = None
        self._stream: torch.cuda.Stream | None = None  # one capture stream: the pool's blocks are tied to a stream

    def run(self, batch: dict[str, Tensor], scale: float) -> Tensor:
        """Forward + backward of ``loss_fn(batch) * scale`` (gradients add into ``.grad``); returns the
        pass's loss sum, detached."""
        key = shape_key(batch)
        captured = self.graphs.get(key)
        if captured is not None:
            for name, tensor in batch.items():
                captured.inputs[name].copy_(tensor, non_blocking=True)
            captured.scale.fill_(scale)
            captured.graph.replay()
            self.replays += 1
            return captured.loss.detach().clone()
        loss = self.loss_fn(batch)
        (loss * scale).backward()
        result = loss.detach()
        del loss  # its autograd graph (and the AccumulateGrad nodes, tied to this stream) must not outlive the pass
        self.eager += 1
        self.seen[key] += 1
        if self.seen[key] >= self.capture_after and len(self.graphs) < self.max_graphs and self.failure is None:
            try:
                self._capture(key, batch)
            except RuntimeError as error:  # a capture only records: no gradient was touched
                self.failure = f"{type(error).__name__}: {error}".splitlines()[0]
                log.warning("CUDA graph capture failed, passes stay eager: %s", self.failure)
        return result

    def close(self) -> None:
        """Drop every graph, its static tensors and the shared pool: the pool's memory goes back to the caching
        allocator (``torch.cuda.empty_cache`` then hands it to the device). Later passes run eagerly."""
        self.graphs.clear()
        self._pool = None
        self._stream = None
        self.failure = "closed"

    def _capture(self, key: ShapeKey, batch: dict[str, Tensor]) -> None:
        for p in self.params:  # the replay must add into memory that outlives it
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.params]
        inputs = {name: t.clone() for name, t in batch.items()}
        scale = torch.zeros((), dtype=torch.float32, device=next(iter(batch.values())).device)
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the warm-up passes' cached blocks: not held beside the graph's pool
        self._stream = self._stream or torch.cuda.Stream()
        # thread_local: this thread may make no unsafe call while capturing, but other threads may; under
        # torchrun, NCCL's watchdog thread queries the events of earlier collectives at any time.
        with torch.cuda.graph(graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"):
            loss = self.loss_fn(inputs)
            (loss * scale).backward()
        if any(p.grad is not g for p, g in zip(self.params, grads, strict=True)):
            raise RuntimeError("CUDA graph capture replaced a .grad tensor; the replay would write elsewhere")
        self._pool = graph.pool()
        self.graphs[key] = _Captured(graph, inputs, scale, loss.detach())  # detached: the capture's autograd graph goes
        log.info("captured a CUDA graph for pass shape %s (%d graph(s))",
                 {name: shape for name, shape, _ in key}, len(self.graphs))
