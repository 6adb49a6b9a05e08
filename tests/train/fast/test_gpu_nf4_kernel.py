"""On CUDA the one-kernel NF4 dequantization gives bitsandbytes' output bit for bit.

Marked ``gpu``: skipped without CUDA (scripts/gpu-tests.sh runs them on a GPU machine).
"""

from __future__ import annotations

import pytest
import torch

from lorafleet.train.fast.facts import nf4_layout_problem

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CASES = [  # (shape, blocksize, nested, dtype)
    ((4096, 4096), 64, True, torch.bfloat16),  # the Llama-8B attention projection
    ((1024, 4096), 64, True, torch.bfloat16),
    ((4096, 14336), 64, True, torch.bfloat16),  # down_proj: several fp32 scales of the nested absmax
    ((33, 129), 64, True, torch.bfloat16),  # odd element count: the last byte's low half is padding
    ((576, 1536), 64, False, torch.bfloat16),
    ((64, 320), 128, True, torch.float16),
    ((7, 300), 256, False, torch.float32),
    ((512, 512), 32, True, torch.bfloat16),
]


@pytest.mark.parametrize("shape,blocksize,nested,dtype", CASES)
def test_equals_bitsandbytes(shape, blocksize, nested, dtype):
    import bitsandbytes.functional as bnbf

    from lorafleet.train.fast.nf4_kernel import dequantize_nf4

    generator = torch.Generator().manual_seed(sum(shape))
    weight = (torch.randn(shape, generator=generator) * 0.05).to("cuda", dtype)
    weight[0, :3] = torch.tensor([0.0, 1e-8, -3.0])  # zero, tiny, an absmax outlier
    packed, state = bnbf.quantize_4bit(weight, blocksize=blocksize, quant_type="nf4", compress_statistics=nested)
    assert nf4_layout_problem(packed, state) is None
    ours = dequantize_nf4(packed, state)
    theirs = bnbf.dequantize_4bit(packed, state)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)


def test_inside_a_cuda_graph():
    """Captured once, a replay dequantizes again from the weight's current bytes (the passes' graphs do this)."""
    import bitsandbytes.functional as bnbf

    from lorafleet.train.fast.nf4_kernel import dequantize_nf4

    weight = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=True)
    dequantize_nf4(packed, state)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = dequantize_nf4(packed, state)
    packed.copy_(torch.flip(packed, dims=(0,)))
    graph.replay()
    assert torch.equal(out, bnbf.dequantize_4bit(packed, state))


def test_device_check_passes():
    from lorafleet.train.fast.nf4_kernel import dequant_problem

    assert dequant_problem(torch.device("cuda", torch.cuda.current_device())) is None


def test_fused_lora_linear_is_unchanged_by_the_kernel():
    """The fused LoRA linear over an NF4 base gives the same output and gradients, bit for bit, whichever
    dequantizes its weight (forward and the input gradient both dequantize)."""
    import bitsandbytes as bnb

    from lorafleet.train.fast.fused_lora import LoraLinearFunction

    torch.manual_seed(3)
    base = bnb.nn.Linear4bit(512, 384, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                             compress_statistics=True)
    base.weight = bnb.nn.Params4bit(torch.randn(384, 512) * 0.05, requires_grad=False, quant_type="nf4",
                                    compress_statistics=True)
    base = base.to("cuda")
    x = torch.randn(2, 64, 512, device="cuda", dtype=torch.bfloat16)
    a = torch.randn(16, 512, device="cuda") * 0.01
    b = torch.randn(384, 16, device="cuda") * 0.01
    results = []
    for kernel in (False, True):
        inputs = [t.clone().requires_grad_(True) for t in (x, a, b)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = LoraLinearFunction.apply(*inputs, base, 2.0, 0.0, False, False, kernel)
        out.backward(torch.ones_like(out))
        results.append((out, *(t.grad for t in inputs)))
    for plain, fast in zip(*results):
        assert torch.equal(plain, fast)
