"""Data-parallel plumbing for `torchrun`: the same `lorafleet train` command, more processes.

With WORLD_SIZE > 1 in the environment (torchrun sets it) the process group is initialised from
the environment, gloo on CPU and NCCL on CUDA. A single process needs no process group; the helpers
below then degrade to no-ops so the training loop has one code path.

Every tensor collective goes through ``all_reduce_sum``, which moves its tensor to the device the group's
backend works on (NCCL: this process's GPU; gloo: the CPU) and back: a CPU tensor handed to NCCL fails
with "No backend type associated with device type cpu" on the first step. Gradients are not reduced by
DDP hooks but once per optimizer step, after every pass (``FlatGradients.all_reduce``): the LoRA gradients are
small, and nothing then runs inside a pass, so a pass can be replayed from a CUDA graph on every process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the artifact, checkpoints, metrics and the progress bar."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the torchrun job described by the environment, or return a single-process DistInfo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", info.local_rank))
        else:
            dist.init_process_group("gloo")
    return info


def training_device(info: DistInfo) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def backend_device(backend: str, cuda_index: int | None) -> torch.device:
    """The device a collective's tensors must live on for ``backend``: the process's GPU for NCCL, else the CPU."""
    if backend == "nccl":
        if cuda_index is None:
            raise RuntimeError("the NCCL backend needs a CUDA device in this process")
        return torch.device("cuda", cuda_index)
    return torch.device("cpu")


def collective_device() -> torch.device:
    """``backend_device`` of the initialised process group."""
    backend = str(dist.get_backend())
    return backend_device(backend, torch.cuda.current_device() if backend == "nccl" else None)


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``value`` over all processes, in place (staged through the backend's device); returns it."""
    if not info.enabled:
        return value
    staged = value.to(collective_device())
    dist.all_reduce(staged, op=dist.ReduceOp.SUM)
    if staged is not value:
        value.copy_(staged)
    return value


class FlatGradients:
    """The trainable parameters' gradients as views into one flat buffer per dtype (what DDP's
    ``gradient_as_bucket_view`` does), so summing them over processes is one all-reduce per buffer.

    Built before the first pass: backward adds into the views in place, and a CUDA graph captured later
    records those same addresses. Copying the gradients into a buffer and back every step (``torch.cat``,
    then one copy per tensor: 448 of them for an 8B model's r=32 all-linear adapter) cost more than the
    all-reduce itself. Callers zero the gradients in place (``zero_grad(set_to_none=False)``); a replaced
    ``.grad`` is an error, not a silent fallback.
    """

    def __init__(self, params: list[torch.Tensor]):
        self.params = [p for p in params if p.requires_grad]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in self.params:
            by_dtype.setdefault(p.dtype, []).append(p)
        self.buffers: list[torch.Tensor] = []
        for dtype, group in by_dtype.items():
            flat = torch.zeros(sum(p.numel() for p in group), dtype=dtype, device=group[0].device)
            for p, view in zip(group, flat.split([p.numel() for p in group]), strict=True):
                if p.grad is not None:
                    view.copy_(p.grad.reshape(-1))
                p.grad = view.view_as(p)
            self.buffers.append(flat)
        self._views = [p.grad for p in self.params]

    def all_reduce(self, info: DistInfo) -> None:
        """Sum every gradient over all processes, in place, one all-reduce per dtype.

        The loop divides each pass's loss by the step's global trained-token count, so the sum (not the mean)
        is the gradient of the global loss, and N processes × micro-batch m update as 1 process × N·m does.
        Runs between passes, never inside a captured graph.
        """
        if any(p.grad is not view for p, view in zip(self.params, self._views, strict=True)):
            raise RuntimeError("a .grad tensor was replaced after FlatGradients was built: zero gradients in place "
                               "(zero_grad(set_to_none=False)), or the buffer would be summed without them")
        for flat in self.buffers:
            all_reduce_sum(flat, info)


def broadcast_parameters(params: list[torch.Tensor], info: DistInfo) -> None:
    """Rank 0's values of ``params`` on every process (the adapter starts identical everywhere)."""
    if not info.enabled:
        return
    device = collective_device()
    for p in params:
        data = p.detach()  # the parameter's storage, outside autograd
        staged = data.to(device)  # `data` itself when it is already on the backend's device
        dist.broadcast(staged, src=0)
        if staged is not data:
            data.copy_(staged)


def all_gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """Every process's `value`, indexed by rank."""
    if not info.enabled:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(value: Any, info: DistInfo) -> Any:
    """Rank 0's `value` on every process."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
