"""Fused LoRA autograd functions: the frozen base matmul and the LoRA update in one pass.

PEFT computes ``base(x).clone() + B(A(dropout(x))) * scale`` as separate kernels, keeps a dropped
copy of every input and, under full gradient checkpointing, redoes all of it (dequantizing NF4 weights
each time). These functions compute the same function with:

* the LoRA update accumulated into the base output by one ``addmm_`` (no clone, no extra add);
* the dropout mask regenerated from a seed in backward instead of storing a dropped copy;
* only the tensors backward truly needs saved: the layer input and the (tokens, r) LoRA activations,
  plus, for the MLP, the gate and up projections (the SiLU product is recomputed, it is elementwise);
* frozen base weights: no weight gradient, and an NF4 weight dequantized once in forward and once in
  backward.

Gradients flow to ``lora_A`` / ``lora_B`` (any dtype; returned in the parameter's dtype). The math is
PEFT's vanilla LoRA (no DoRA); rounding differs only where one fused matmul replaces two bf16 steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def dense_weight(base: nn.Module, dtype: torch.dtype) -> Tensor:
    """The frozen weight of ``base`` (nn.Linear or bitsandbytes Linear4bit) as a dense (out, in) tensor."""
    weight = base.weight
    if weight.__class__.__name__ == "Params4bit":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    return weight.to(dtype)


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype matmuls on ``t`` run in: autocast's when it is on (as nn.Linear would), else t's own."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


def new_seed() -> int:
    """A dropout seed drawn from torch's CPU generator: reproducible under ``torch.manual_seed`` and
    restored by checkpoint recomputation (which saves and restores the CPU RNG state)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def _keep_scale(x: Tensor, p: float, seed: int) -> Tensor:
    """Dropout's keep mask already divided by (1 - p), same shape and dtype as x, regenerated exactly
    from ``seed``."""
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
    return keep.mul_(1.0 / (1.0 - p))


def _lora_forward(x: Tensor, w: Tensor, a: Tensor, b: Tensor, scale: float, p: float, seed: int,
                  bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """y = x @ w.T + scale * (dropout(x) @ a.T) @ b.T (+ bias); returns (y, low) with low (tokens, r)."""
    dropped = x * _keep_scale(x, p, seed) if p > 0 else x
    low = dropped @ a.t()  # (tokens, r)
    y = x @ w.t()  # (tokens, out)
    y.addmm_(low, b.t(), alpha=scale)
    if bias is not None:
        y += bias.to(y.dtype)
    return y, low


def _lora_backward(dy: Tensor, x: Tensor, low: Tensor, w: Tensor, a: Tensor, b: Tensor, scale: float,
                   p: float, seed: int, need_dx: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """Gradients of ``_lora_forward`` for x (if need_dx), a and b; the base weight gets none."""
    d_low = (dy @ b) * scale  # (tokens, r)
    grad_b = (dy.t() @ low) * scale  # (out, r)
    keep = _keep_scale(x, p, seed) if p > 0 else None
    grad_a = d_low.t() @ (x * keep if keep is not None else x)  # (r, in)
    dx = None
    if need_dx:
        dx = dy @ w  # (tokens, in)
        if keep is None:
            dx.addmm_(d_low, a)
        else:
            dx += (d_low @ a) * keep
    return dx, grad_a, grad_b


class LoraLinearFunction(torch.autograd.Function):
    """One LoRA linear layer over a frozen base layer (see module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, lora_a: Tensor, lora_b: Tensor, base: nn.Module, scale: float, p: float):
        seed = new_seed()
        dtype = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            flat = x.reshape(-1, x.shape[-1]).to(dtype)  # (tokens, in)
            w = dense_weight(base, dtype)
            y, low = _lora_forward(flat, w, lora_a.to(dtype), lora_b.to(dtype), scale, p, seed, base.bias)
        ctx.save_for_backward(x, low, lora_a, lora_b)
        ctx.base, ctx.scale, ctx.p, ctx.seed, ctx.dtype = base, scale, p, seed, dtype
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, low, lora_a, lora_b = ctx.saved_tensors
        dtype = ctx.dtype
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dtype)
        w = dense_weight(ctx.base, dtype) if ctx.needs_input_grad[0] else None
        dx, grad_a, grad_b = _lora_backward(dy2, flat, low, w, lora_a.to(dtype), lora_b.to(dtype), ctx.scale,
                                            ctx.p, ctx.seed, ctx.needs_input_grad[0])
        if dx is not None:
            dx = dx.reshape(x.shape).to(x.dtype)
        return dx, grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype), None, None, None


def rms_normalize(h: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Llama RMSNorm as transformers computes it (fp32 statistics, output in h's dtype times weight).
    Returns (normed (tokens, hidden), rstd (tokens, 1) fp32)."""
    hf = h.float()
    rstd = torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(h.dtype) * (hf * rstd).to(h.dtype), rstd


def rms_norm_backward(dx: Tensor, h: Tensor, rstd: Tensor, weight: Tensor) -> Tensor:
    """Input gradient of ``rms_normalize`` (weight frozen), computed in fp32."""
    n = h.float() * rstd
    dn = dx.float() * weight.float()
    return (rstd * (dn - n * (dn * n).mean(-1, keepdim=True))).to(h.dtype)


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a frozen weight that saves only its bf16 input and (tokens, 1) rstd."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, eps: float):
        out, rstd = rms_normalize(h, weight, eps)
        ctx.save_for_backward(h, rstd, weight)
        return out

    @staticmethod
    def backward(ctx, dx: Tensor):
        h, rstd, weight = ctx.saved_tensors
        return rms_norm_backward(dx, h, rstd, weight), None, None


class NormLoraMLPFunction(torch.autograd.Function):
    """RMSNorm → SwiGLU MLP whose gate/up/down are LoRA layers over frozen bases.

    Saves the block input h (tokens, hidden), rstd, gate and up outputs (tokens, inter) and the three
    (tokens, r) LoRA activations; recomputes the norm, dropout masks and silu(gate) * up in backward.
    """

    @staticmethod
    def forward(ctx, h: Tensor, norm_weight: Tensor, eps: float, bases: tuple[nn.Module, ...],
                scales: tuple[float, ...], p: float, ag: Tensor, bg: Tensor, au: Tensor, bu: Tensor,
                ad: Tensor, bd: Tensor):
        dtype = compute_dtype(h)
        seeds = (new_seed(), new_seed(), new_seed())
        with torch.autocast(h.device.type, enabled=False):
            y, low_g, low_u, low_d, gate, up, rstd = NormLoraMLPFunction._forward(
                h, norm_weight, eps, bases, scales, p, seeds, dtype, ag, bg, au, bu, ad, bd)
        ctx.save_for_backward(h, rstd, norm_weight, gate, up, low_g, low_u, low_d, ag, bg, au, bu, ad, bd)
        ctx.bases, ctx.scales, ctx.p, ctx.seeds, ctx.eps, ctx.dtype = bases, scales, p, seeds, eps, dtype
        return y.reshape(*h.shape[:-1], y.shape[-1])

    @staticmethod
    def _forward(h, norm_weight, eps, bases, scales, p, seeds, dtype, ag, bg, au, bu, ad, bd):
        flat = h.reshape(-1, h.shape[-1])
        x, rstd = rms_normalize(flat, norm_weight, eps)  # (tokens, hidden)
        x = x.to(dtype)
        gate, low_g = _lora_forward(x, dense_weight(bases[0], dtype), ag.to(dtype), bg.to(dtype), scales[0], p,
                                    seeds[0], bases[0].bias)
        up, low_u = _lora_forward(x, dense_weight(bases[1], dtype), au.to(dtype), bu.to(dtype), scales[1], p,
                                  seeds[1], bases[1].bias)
        del x
        act = F.silu(gate) * up  # (tokens, inter)
        y, low_d = _lora_forward(act, dense_weight(bases[2], dtype), ad.to(dtype), bd.to(dtype), scales[2], p,
                                 seeds[2], bases[2].bias)
        return y, low_g, low_u, low_d, gate, up, rstd

    @staticmethod
    def backward(ctx, dy: Tensor):
        h, rstd, norm_weight, gate, up, low_g, low_u, low_d, ag, bg, au, bu, ad, bd = ctx.saved_tensors
        dtype, p, seeds, scales, bases = ctx.dtype, ctx.p, ctx.seeds, ctx.scales, ctx.bases
        flat = h.reshape(-1, h.shape[-1])
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dtype)
        gate_f = gate.float()
        sig = torch.sigmoid(gate_f)
        silu = (gate_f * sig).to(dtype)
        act = silu * up
        d_act, grad_ad, grad_bd = _lora_backward(dy2, act, low_d, dense_weight(bases[2], dtype), ad.to(dtype),
                                                 bd.to(dtype), scales[2], p, seeds[2], True)
        del act
        d_up = (d_act * silu).to(dtype)
        d_gate = (d_act.float() * up.float() * sig * (1 + gate_f * (1 - sig))).to(dtype)
        del d_act, sig, gate_f, silu
        x = rms_normalize(flat, norm_weight, ctx.eps)[0].to(dtype)
        dx, grad_ag, grad_bg = _lora_backward(d_gate, x, low_g, dense_weight(bases[0], dtype), ag.to(dtype),
                                              bg.to(dtype), scales[0], p, seeds[0], True)
        dx_up, grad_au, grad_bu = _lora_backward(d_up, x, low_u, dense_weight(bases[1], dtype), au.to(dtype),
                                                 bu.to(dtype), scales[1], p, seeds[1], True)
        dx += dx_up
        dh = rms_norm_backward(dx, flat, rstd, norm_weight).reshape(h.shape).to(h.dtype)
        grads = [g.to(t.dtype) for g, t in ((grad_ag, ag), (grad_bg, bg), (grad_au, au), (grad_bu, bu),
                                            (grad_ad, ad), (grad_bd, bd))]
        return (dh, None, None, None, None, None, *grads)
