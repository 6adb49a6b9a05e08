"""NF4 dequantization as one Triton kernel, bit for bit what bitsandbytes computes (CUDA only).

``bitsandbytes.functional.dequantize_4bit`` on a double-quantized weight launches three kernels: the
8-bit absmax back to fp32 (one fp32 scale per 256 of them), ``+= offset``, then the 4-bit codes. The fused
path dequantizes every frozen weight twice per pass (forward and the input gradient), 448 weights a pass at
the Llama-8B shape, so each launch and each round trip of the fp32 absmax through memory counts. Here one
kernel reads each packed byte once and writes its two outputs, computing its block's absmax in registers
with the same fp32 operations in the same order:

    absmax[b] = fp32(code2[qabsmax[b]] * absmax2[b // blocksize2]) + offset     (nested; else absmax[b])
    out[2i]   = round(code[byte[i] >> 4] * absmax[2i // blocksize])            (to the weight's dtype)
    out[2i+1] = round(code[byte[i] & 15] * absmax[2i // blocksize])

Floating-point contraction is off (``enable_fp_fusion=False``) so the multiply and the add round separately,
as in bitsandbytes. ``dequant_problem`` checks the kernel against bitsandbytes on the device once per run
(``facts.DeviceFacts.probe``); ``facts.nf4_layout_problem`` says which weights it takes (the plan turns
it on only when it takes every 4-bit weight of the model).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from lorafleet.train.fast.facts import nf4_layout_problem

BLOCK = 1024  # packed bytes per program: 2048 outputs


@triton.jit
def _nf4_kernel(packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, out_ptr, n_bytes, n_out,
                HALF_BLOCK: tl.constexpr, BLOCK2: tl.constexpr, NESTED: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    inside = offsets < n_bytes
    byte = tl.load(packed_ptr + offsets, mask=inside, other=0).to(tl.int32)
    block = offsets // HALF_BLOCK  # the absmax block of both outputs of this byte
    if NESTED:
        q = tl.load(absmax_ptr + block, mask=inside, other=0).to(tl.int32)
        scale2 = tl.load(absmax2_ptr + block // BLOCK2, mask=inside, other=0.0)
        absmax = tl.load(code2_ptr + q, mask=inside, other=0.0) * scale2 + tl.load(offset_ptr)
    else:
        absmax = tl.load(absmax_ptr + block, mask=inside, other=0.0)
    high = tl.load(code_ptr + (byte >> 4), mask=inside, other=0.0) * absmax
    low = tl.load(code_ptr + (byte & 15), mask=inside, other=0.0) * absmax
    values = tl.join(high, low).reshape(2 * BLOCK_SIZE).to(out_ptr.dtype.element_ty)
    out_offsets = pid.to(tl.int64) * (2 * BLOCK_SIZE) + tl.arange(0, 2 * BLOCK_SIZE)
    tl.store(out_ptr + out_offsets, values, mask=out_offsets < n_out)


def dequantize_nf4(packed: Tensor, state) -> Tensor:
    """The dense weight of ``packed`` (uint8, (ceil(n / 2), 1)) and its bitsandbytes ``quant_state``, in
    ``state.dtype`` and ``state.shape``. The caller has checked ``facts.nf4_layout_problem``."""
    n_out = 1
    for size in state.shape:
        n_out *= size
    out = torch.empty(tuple(state.shape), dtype=state.dtype, device=packed.device)
    n_bytes = packed.numel()
    nested = bool(state.nested)
    absmax2, code2, offset = (state.state2.absmax, state.state2.code, state.offset) if nested else (
        state.absmax, state.absmax, state.absmax)  # unused when not nested
    if nested and not isinstance(offset, Tensor):
        offset = torch.tensor(float(offset), dtype=torch.float32, device=packed.device)
    grid = (triton.cdiv(n_bytes, BLOCK),)
    _nf4_kernel[grid](packed, state.absmax, absmax2, code2, offset, state.code, out, n_bytes, n_out,
                      HALF_BLOCK=state.blocksize // 2, BLOCK2=state.state2.blocksize if nested else 1, NESTED=nested,
                      BLOCK_SIZE=BLOCK, enable_fp_fusion=False)
    return out


def dequant_problem(device: torch.device) -> str | None:
    """Run the kernel once on ``device`` against bitsandbytes on NF4 weights (double-quantized and not, an odd
    element count, bf16 and fp16): None when every output is bit-identical, else what went wrong."""
    try:
        import bitsandbytes.functional as bnbf

        generator = torch.Generator(device="cpu").manual_seed(0)
        for shape, nested, dtype in (((96, 1024), True, torch.bfloat16), ((33, 129), True, torch.bfloat16),
                                     ((64, 320), False, torch.float16)):
            weight = (torch.randn(shape, generator=generator) * 0.02).to(device=device, dtype=dtype)
            packed, state = bnbf.quantize_4bit(weight, blocksize=64, quant_type="nf4", compress_statistics=nested)
            problem = nf4_layout_problem(packed, state)
            if problem:
                return f"Triton NF4 dequantization off: {problem}"
            if not torch.equal(dequantize_nf4(packed, state), bnbf.dequantize_4bit(packed, state)):
                return f"Triton NF4 dequantization off: differs from bitsandbytes on {shape} {dtype}"
    except Exception as exc:  # any failure turns the kernel off for the run; the plan says why
        return f"Triton NF4 dequantization off: {type(exc).__name__}: {exc}"
    return None
