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

* RoPE (``triton_rope``): Liger's kernel rotates q and k in one pass each way; transformers makes
  about ten passes (two products, a half-swap with cat and neg, an add, each for q and k, on strided
  views). The H200 profile put those at ~0.7 ms per layer (BENCHMARKS.md, round 4). The math is in
  fp32 when cos/sin are fp32 (a QLoRA model's fp32 residual stream), like transformers' promotion.
  The fused attention (``layers.py``) calls it in place of the architecture's ``apply_rotary_pos_emb``.

``triton_problem``, ``dropout_problem`` and ``rope_problem`` run each kernel once against the torch
version on the device (``facts.DeviceFacts.probe``, once per run); any error or mismatch turns that
kernel off for the run, and the plan says why.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class RmsState:
    """What ``rms_norm`` hands to ``rms_norm_grad``: which kernel ran, its per-row 1/rms, and the Triton
    kernel's launch settings. ``rstd`` travels through autograd's saved tensors (checkpoint-safe), so
    the functions that keep a state store it without (``without_rstd``) and put it back for backward."""

    kind: Literal["torch", "triton"]
    rstd: Tensor | None  # (tokens,) or (tokens, 1) fp32
    block: int = 0
    warps: int = 0
    mode: int = 0

    def without_rstd(self) -> RmsState:
        return dataclasses.replace(self, rstd=None)

    def with_rstd(self, rstd: Tensor) -> RmsState:
        return dataclasses.replace(self, rstd=rstd)


def rms_norm(h: Tensor, weight: Tensor, eps: float, triton: bool) -> tuple[Tensor, RmsState]:
    """Llama RMSNorm of a contiguous (tokens, hidden) ``h``: (normed in h's dtype, state for the grad)."""
    if triton:
        from liger_kernel.ops.rms_norm import rms_norm_forward

        out, _, rstd, block, warps, mode = rms_norm_forward(h, weight, eps, 0.0, "llama", None)
        return out, RmsState("triton", rstd, block, warps, mode)
    hf = h.float()
    rstd = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)  # (tokens, 1) fp32
    return weight.to(h.dtype) * (hf * rstd).to(h.dtype), RmsState("torch", rstd)


def rms_norm_grad(dx: Tensor, h: Tensor, weight: Tensor, state: RmsState, overwrite_dx: bool = False) -> Tensor:
    """Input gradient of ``rms_norm`` (the weight is frozen). ``overwrite_dx`` lets the Triton path
    write the result into ``dx``'s memory (only when the caller owns dx)."""
    if state.kind == "triton":
        from liger_kernel.ops.rms_norm import rms_norm_backward

        rows = h.reshape(-1, h.shape[-1])  # the kernel reads h's row stride: it must be 2-D
        dh, _ = rms_norm_backward(dx.contiguous(), rows, weight, state.rstd, 0.0, state.mode, state.block,
                                  state.warps, overwrite_dx, None, needs_dw=False)
        return dh.to(h.dtype)
    rstd = state.rstd
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


def dropout_problem(device: torch.device) -> str | None:
    """None when the Triton dropout kernel (``dropout_kernel.py``) runs on ``device`` and behaves as
    dropout: the same seed gives the same mask and another seed another one, about p of the elements
    are dropped, kept values are unchanged, and the masked add equals ``dx + t * mask``; else why not."""
    if device.type != "cuda":
        return "not a CUDA device"
    try:
        from lorafleet.train.fast import dropout_kernel

        g = torch.Generator(device=device).manual_seed(0)
        x = (torch.randn(512, 4096, device=device, generator=g).abs() + 0.5).to(torch.bfloat16)
        first, again, other = (dropout_kernel.dropped(x, 0.25, s) for s in (2**40 + 7, 2**40 + 7, 12345))
        keep = first != 0
        rate = float(keep.float().mean())
        if not torch.equal(first, again) or torch.equal(first, other) or abs(rate - 0.75) > 0.01:
            return f"Triton dropout off: masks not reproducible or rate {rate:.3f} not 0.75"
        if not torch.equal(first[keep], x[keep]):
            return "Triton dropout off: kept values changed"
        dx, t = (torch.randn(512, 4096, device=device, generator=g).to(torch.bfloat16) for _ in range(2))
        want = dx + t * keep.to(t.dtype)
        if not torch.equal(dropout_kernel.add_dropped_(dx, t, 0.25, 2**40 + 7), want):
            return "Triton dropout off: masked add differs from dx + t * mask"
    except Exception as exc:  # noqa: BLE001 - any failure means: use torch
        return f"Triton dropout off: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def rope_problem(device: torch.device, module_name: str) -> str | None:
    """None when Liger's RoPE agrees with ``module_name``'s ``apply_rotary_pos_emb`` on ``device``
    (forward and backward, bf16 q/k, fp32 and bf16 cos/sin, within bf16 rounding); else why not."""
    if device.type != "cuda":
        return "not a CUDA device"
    module = sys.modules.get(module_name)
    if module is None or not hasattr(module, "apply_rotary_pos_emb"):
        return f"Triton RoPE off: {module_name} has no apply_rotary_pos_emb"
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        g = torch.Generator(device=device).manual_seed(0)
        q0, k0 = (torch.randn(2, heads, 64, 128, device=device, generator=g).to(torch.bfloat16) for heads in (8, 2))
        dq, dk = (torch.randn_like(t) for t in (q0, k0))
        inv = 1.0 / (10000 ** (torch.arange(0, 128, 2, device=device).float() / 128))
        freqs = torch.arange(64, device=device).float()[:, None] * inv[None]
        angles = torch.cat([freqs, freqs], -1)[None].expand(2, 64, 128)
        for dtype in (torch.float32, torch.bfloat16):
            cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
            results = []
            for fn in (module.apply_rotary_pos_emb, liger_rotary_pos_emb):
                q, k = (t.clone().requires_grad_(True) for t in (q0, k0))
                # transformers hands the kernel transposed views of the projections: do the same
                qv, kv = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k))
                oq, ok = fn(qv, kv, cos, sin)
                torch.autograd.backward((oq.to(torch.bfloat16), ok.to(torch.bfloat16)), (dq, dk))
                results.append((oq.detach().to(torch.bfloat16), ok.detach().to(torch.bfloat16), q.grad, k.grad))
            for a, b in zip(*results):
                torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
    except Exception as exc:  # noqa: BLE001 - any failure means: use transformers' RoPE
        return f"Triton RoPE off: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None
