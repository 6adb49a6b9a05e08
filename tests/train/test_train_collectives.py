"""The collectives of `train/distributed.py` on 2 real CPU processes (gloo): the backend picks the device,
the gradients are summed as one flat buffer per dtype, and the parameters start identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lorafleet.train.distributed import (
    DistInfo, FlatGradients, all_reduce_sum, backend_device, broadcast_parameters,
)


@pytest.mark.parametrize(("backend", "index", "device"), [
    ("nccl", 1, torch.device("cuda", 1)),  # NCCL reduces GPU tensors only: a CPU one fails on the first step
    ("gloo", None, torch.device("cpu")),
    ("gloo", 0, torch.device("cpu")),
])
def test_backend_device(backend: str, index: int | None, device: torch.device):
    assert backend_device(backend, index) == device


def test_nccl_without_a_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="NCCL backend needs a CUDA device"):
        backend_device("nccl", None)


def _worker(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info = DistInfo(rank, 2, rank)
    counts = all_reduce_sum(torch.tensor([rank + 1.0, 10.0 * rank], dtype=torch.float64), info)
    params = [torch.nn.Parameter(torch.full((2, 3), float(rank))), torch.nn.Parameter(torch.zeros(4)),
              torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))]
    broadcast_parameters(params, info)  # rank 0's values (zeros) everywhere
    params[0].grad = torch.arange(6.0).view(2, 3) * (rank + 1)  # a gradient from before the buffer: kept
    grads = FlatGradients(params)
    views = [p.grad for p in params]
    # backward adds into the views in place (params[1] gets no gradient: its view stays zeros)
    ((params[0] * (rank + 1)).sum() + (params[2].float() * 0.5 * (rank + 1)).sum()).backward()
    grads.all_reduce(info)
    kept_views = all(p.grad is v for p, v in zip(params, views, strict=True))
    params[1].grad = torch.zeros(4)  # what zero_grad(set_to_none=True) and a later backward would do
    try:
        grads.all_reduce(info)
        replaced = ""
    except RuntimeError as error:
        replaced = str(error)
    torch.save({"counts": counts, "values": [p.detach() for p in params], "grads": [p.grad for p in params],
                "kept_views": kept_views, "buffers": [(b.dtype, b.numel()) for b in grads.buffers],
                "replaced": replaced}, f"{results}/{rank}.pt")
    dist.destroy_process_group()


def test_sums_over_two_gloo_processes(tmp_path: Path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got["counts"].tolist() == [3.0, 10.0]
        assert all(float(v.float().abs().sum()) == 0 for v in got["values"])  # rank 1's values were replaced
        # (1× + 2×) the gradient from before the buffer plus (1 + 2) from backward
        torch.testing.assert_close(got["grads"][0], torch.arange(6.0).view(2, 3) * 3 + 3)
        assert got["grads"][1].tolist() == [0.0] * 4
        assert got["grads"][2].dtype == torch.bfloat16 and got["grads"][2].tolist() == [1.5] * 3
        assert got["kept_views"]  # summed in place: a CUDA graph keeps adding into the same .grad
        assert got["buffers"] == [(torch.float32, 10), (torch.bfloat16, 3)]  # one flat buffer per dtype
        assert "was replaced" in got["replaced"]  # never a silent sum without the replaced gradient


def test_tensor_collectives_live_only_in_distributed_py():
    """Every tensor collective goes through `all_reduce_sum` / `broadcast_parameters`, which stage the tensor on
    the backend's device; a direct call elsewhere could hand NCCL a CPU tensor again."""
    src = Path(__file__).resolve().parents[2] / "src" / "lorafleet"
    names = ("all_reduce(", "broadcast(", "reduce_scatter(", "all_gather(", "all_gather_into_tensor(", "reduce(")
    hits = [(p.relative_to(src).as_posix(), n) for p in src.rglob("*.py") for n in names
            if f"dist.{n}" in p.read_text() and p.relative_to(src).as_posix() != "train/distributed.py"]
    assert not hits, hits
