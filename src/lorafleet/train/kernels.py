"""Elementwise parts of the fused LoRA functions: one Triton kernel each on CUDA, torch elsewhere.

The eager torch versions of RMSNorm and of the SwiGLU backward upcast whole (tokens, width) tensors
to fp32 and make ten or more passes over memory; at seq 2048 × micro-batch 2 on the Llama-8B shape
that was a few milliseconds per layer. Liger's Triton kernels make one pass, computing in fp32 in
registers and rounding once, as the torch path does for its outputs:

* RMSNorm in Liger's "llama" casting mode is transformers' LlamaRMSNorm (fp32 statistics, the
  normalized value rounded to the input dtype before the weight multiply);
* SiLU·mul forward rounds silu(gate) to the input dtype before multiplying, like ``F.silu(g) * u``;
* SiLU·mul backward takes silu in fp32 (eager uses the bf16-rounded silu for d_up): a difference
  in the last bf16 bit of some elements, the "rounding order" the module docs allow.

``triton_problem`` runs each kernel once against the torch version before they are used; any error or
mismatch turns them off for that model (the caller records why).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as F

RmsState = tuple  # opaque: what ``rms_norm`` hands to ``rms_norm_grad``


def rms_norm(h: Tensor, weight: Tensor, eps: float, triton: bool) -> tuple[Tensor, RmsState]:
    """Llama RMSNorm of a contiguous (tokens, hidden) ``h``: (normed in h's dtype, state for the grad)."""
    if triton:
        from liger_kernel.ops.rms_norm import rms_norm_forward

        out, _, rstd, block, warps, mode = rms_norm_forward(h, weight, eps, 0.0, "llama", None)
        return out, ("triton", rstd, block, warps, mode)
    hf = h.float()
    rstd = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)  # (tokens, 1) fp32
    return weight.to(h.dtype) * (hf * rstd).to(h.dtype), ("torch", rstd)


def rms_norm_grad(dx: Tensor, h: Tensor, weight: Tensor, state: RmsState, overwrite_dx: bool = False) -> Tensor:
    """Input gradient of ``rms_norm`` (the weight is frozen). ``overwrite_dx`` lets the Triton path
    write the result into ``dx``'s memory (only when the caller owns dx)."""
    if state[0] == "triton":
        from liger_kernel.ops.rms_norm import rms_norm_backward

        _, rstd, block, warps, mode = state
        rows = h.reshape(-1, h.shape[-1])  # the kernel reads h's row stride: it must be 2-D
        dh, _ = rms_norm_backward(dx.contiguous(), rows, weight, rstd, 0.0, mode, block, warps, overwrite_dx, None,
                                  needs_dw=False)
        return dh.to(h.dtype)
    rstd = state[1]
    n = h.float() * rstd
    dn = dx.float() * weight.float()
    return (rstd * (dn - n * (dn * n).mean(-1, keepdim=True))).to(h.dtype)


def silu_mul(gate: Tensor, up: Tensor, triton: bool) -> Tensor:
    """silu(gate) * up for contiguous (tokens, inter) tensors."""
    if triton:
        from liger_kernel.ops.swiglu import swiglu_forward

        return swiglu_forward(gate, up)[2]
    return F.silu(gate) * up


def silu_mul_grad(gate: Tensor, up: Tensor, d_act: Tensor, triton: bool) -> tuple[Tensor, Tensor]:
    """(d_gate, d_up) of ``silu_mul``. The Triton path writes them into gate's and up's memory (the
    caller must not need gate or up afterwards); the torch path computes in fp32 where inputs are lower."""
    if triton:
        from liger_kernel.ops.swiglu import swiglu_backward

        return swiglu_backward(gate, up, d_act.contiguous())
    work = torch.promote_types(gate.dtype, torch.float32)
    g = gate.to(work)
    sig = torch.sigmoid(g)
    silu = (g * sig).to(gate.dtype)
    d_up = (d_act * silu).to(up.dtype)
    d_gate = (d_act.to(work) * up.to(work) * sig * (1 + g * (1 - sig))).to(gate.dtype)
    return d_gate, d_up


@functools.cache
def triton_problem(device: torch.device) -> str | None:
    """None when the Triton kernels run on ``device`` and agree with the torch versions (bf16, within
    bf16 rounding); else why not (missing package, compile error, mismatch)."""
    if device.type != "cuda":
        return "not a CUDA device"
    try:
        g = torch.Generator(device=device).manual_seed(0)
        h = torch.randn(64, 1000, device=device, generator=g).to(torch.bfloat16)
        w = (1 + 0.1 * torch.randn(1000, device=device, generator=g)).to(torch.bfloat16)
        dx = torch.randn(64, 1000, device=device, generator=g).to(torch.bfloat16)
        for triton in (True, False):
            out, state = rms_norm(h, w, 1e-5, triton)
            got = (out, rms_norm_grad(dx.clone(), h, w, state, overwrite_dx=True))
            if triton:
                fast = got
        checks = list(zip(fast, got))
        gate, up = h * 3, dx
        fast = (silu_mul(gate, up, True), *silu_mul_grad(gate.clone(), up.clone(), h, True))
        slow = (silu_mul(gate, up, False), *silu_mul_grad(gate, up, h, False))
        checks += list(zip(fast, slow))
        for a, b in checks:
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    except Exception as exc:  # noqa: BLE001 - any failure means: use torch
        return f"Triton kernels off: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None
