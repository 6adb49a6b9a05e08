"""Fused LoRA autograd functions: the frozen base matmul and the LoRA update in one pass.

PEFT computes ``base(x).clone() + B(A(dropout(x))) * scale`` as separate kernels, keeps a dropped
copy of every input and, under full gradient checkpointing, redoes all of it (dequantizing NF4 weights
each time). These functions compute the same function with:

* the LoRA update accumulated into the base output by one ``addmm_`` (no clone, no extra add);
* the dropout mask regenerated from a seed in backward instead of storing a dropped copy, and its
  1 / (1 - p) rescale applied to the small LoRA tensors (``keep_mask``);
* only the tensors backward truly needs saved: the layer input and the (tokens, r) LoRA activations,
  plus, for the MLP, the gate and up projections (the SiLU product is recomputed, it is elementwise);
* frozen base weights: no weight gradient, and an NF4 weight dequantized once in forward and once in
  backward; inside a recomputed region (``keep_dense``) the weight dequantized by the
  recomputation is saved for backward instead of being dequantized a third time (it lives from the
  recomputation until that layer's backward is done, never across layers);
* RMSNorm and the SiLU·mul forward/backward as single Triton kernels on CUDA (``kernels.py``);
* with ``device_seeds`` (passes replayed from CUDA graphs, ``graphs.py``), dropout seeds drawn on the
  device and the masks drawn in registers by one Triton kernel (``dropout_kernel.py``): a seed drawn on
  the host would be frozen into the graph and every replay would drop the same elements.

What a call needs is passed in, never read from global state: ``keep_dense`` (the caller runs it inside
a region that is recomputed in backward) and ``device_seeds`` (the plan's CUDA graphs) are arguments.

Gradients flow to ``lora_A`` / ``lora_B`` (any dtype; returned in the parameter's dtype). The math is
PEFT's vanilla LoRA (no DoRA); rounding differs only where one fused matmul replaces two bf16 steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lorafleet.train.fast.kernels import RmsState, rms_norm, rms_norm_grad, silu_mul, silu_mul_grad


def dense_weight(base: nn.Module, dtype: torch.dtype, nf4_kernel: bool = False) -> Tensor:
    """The frozen weight of ``base`` (nn.Linear or bitsandbytes Linear4bit) as a dense (out, in) tensor.
    ``nf4_kernel``: a 4-bit weight is dequantized by ``nf4_kernel.py`` (the plan checked it takes every one)."""
    weight = base.weight
    if weight.__class__.__name__ == "Params4bit":
        if nf4_kernel:
            from lorafleet.train.fast.nf4_kernel import dequantize_nf4

            return dequantize_nf4(weight.data, weight.quant_state).to(dtype)
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
    return weight.to(dtype)


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype matmuls on ``t`` run in: autocast's when it is on (as nn.Linear would), else t's own."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


Seed = int | Tensor  # a host int (torch masks) or a one-element device tensor (Triton masks)


def new_seed(device: torch.device | None = None, on_device: bool = False) -> Seed:
    """A dropout seed drawn from torch's CPU generator: reproducible under ``torch.manual_seed`` and
    restored by checkpoint recomputation (which saves and restores the CPU RNG state). ``on_device`` with
    a CUDA ``device``: a device tensor from the default CUDA generator (safe inside graph capture)."""
    if on_device and device is not None and device.type == "cuda":
        from lorafleet.train.fast import dropout_kernel

        return dropout_kernel.device_seed(device)
    return int(torch.randint(0, 2**62, (1,)).item())


def keep_mask(x: Tensor, p: float, seed: int) -> Tensor:
    """Dropout's 0/1 keep mask (same shape and dtype as x), regenerated exactly from ``seed``. The
    1 / (1 - p) rescale is applied to the small (tokens, r) and (r, in) tensors instead of to x-sized
    ones: x * mask is exact (each element is x or 0), so this is dropout with one pass fewer."""
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)


def dropped(x: Tensor, p: float, seed: Seed) -> Tensor:
    """x * keep_mask(x, p, seed) (no rescale); for a device seed the mask is drawn in the Triton kernel,
    never stored."""
    if isinstance(seed, Tensor):
        from lorafleet.train.fast import dropout_kernel

        return dropout_kernel.dropped(x, p, seed)
    return x * keep_mask(x, p, seed)


def _lora_low(x: Tensor, a: Tensor, p: float, seed: Seed) -> Tensor:
    """dropout(x) @ a.T, the (tokens, r) LoRA activation backward needs."""
    if p > 0:
        low = dropped(x, p, seed) @ a.t()
        low.mul_(1.0 / (1.0 - p))
        return low
    return x @ a.t()


def _lora_forward(x: Tensor, w: Tensor, a: Tensor, b: Tensor, scale: float, p: float, seed: Seed,
                  bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """y = x @ w.T + scale * (dropout(x) @ a.T) @ b.T (+ bias); returns (y, low) with low (tokens, r)."""
    low = _lora_low(x, a, p, seed)  # (tokens, r)
    y = x @ w.t()  # (tokens, out)
    y.addmm_(low, b.t(), alpha=scale)
    if bias is not None:
        y += bias.to(y.dtype)
    return y, low


def _lora_backward(dy: Tensor, x: Tensor, low: Tensor, w: Tensor, a: Tensor, b: Tensor, scale: float,
                   p: float, seed: Seed, need_dx: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """Gradients of ``_lora_forward`` for x (if need_dx), a and b; the base weight gets none."""
    grad_b = (dy.t() @ low) * scale  # (out, r)
    if p > 0 and isinstance(seed, Tensor):
        from lorafleet.train.fast import dropout_kernel

        d_low = (dy @ b) * (scale / (1.0 - p))
        grad_a = d_low.t() @ dropout_kernel.dropped(x, p, seed)
        dx = None
        if need_dx:
            dx = dropout_kernel.add_dropped_(dy @ w, d_low @ a, p, seed)  # dy @ w + (d_low @ a) * keep
        return dx, grad_a, grad_b
    if p > 0:
        d_low = (dy @ b) * (scale / (1.0 - p))  # (tokens, r), the dropout rescale folded in
        keep = keep_mask(x, p, seed)
        grad_a = d_low.t() @ (x * keep)  # (r, in)
    else:
        d_low = (dy @ b) * scale
        keep = None
        grad_a = d_low.t() @ x
    dx = None
    if need_dx:
        dx = dy @ w  # (tokens, in)
        if keep is None:
            dx.addmm_(d_low, a)
        else:
            dx += (d_low @ a) * keep
    return dx, grad_a, grad_b


class LoraLinearFunction(torch.autograd.Function):
    """One LoRA linear layer over a frozen base layer (see module docstring).

    ``apply(x, lora_a, lora_b, base, scale, p, keep_dense=False, device_seeds=False, nf4_kernel=False)``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, lora_a: Tensor, lora_b: Tensor, base: nn.Module, scale: float, p: float,
                keep_dense: bool = False, device_seeds: bool = False, nf4_kernel: bool = False):
        seed = new_seed(x.device, device_seeds) if p > 0 else 0
        dtype = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            flat = x.reshape(-1, x.shape[-1]).to(dtype)  # (tokens, in)
            w = dense_weight(base, dtype, nf4_kernel)
            y, low = _lora_forward(flat, w, lora_a.to(dtype), lora_b.to(dtype), scale, p, seed, base.bias)
        ctx.save_for_backward(x, low, lora_a, lora_b, *((w,) if keep_dense else ()))
        ctx.base, ctx.scale, ctx.p, ctx.seed, ctx.dtype, ctx.nf4_kernel = base, scale, p, seed, dtype, nf4_kernel
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, low, lora_a, lora_b, *kept = ctx.saved_tensors
        dtype = ctx.dtype
        flat = x.reshape(-1, x.shape[-1]).to(dtype)
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dtype)
        w = None
        if ctx.needs_input_grad[0]:
            w = kept[0] if kept else dense_weight(ctx.base, dtype, ctx.nf4_kernel)
        dx, grad_a, grad_b = _lora_backward(dy2, flat, low, w, lora_a.to(dtype), lora_b.to(dtype), ctx.scale,
                                            ctx.p, ctx.seed, ctx.needs_input_grad[0])
        if dx is not None:
            dx = dx.reshape(x.shape).to(x.dtype)
        return dx, grad_a.to(lora_a.dtype), grad_b.to(lora_b.dtype), None, None, None, None, None, None


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a frozen weight that saves only its bf16 input and the (tokens,) rstd."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, eps: float, triton: bool = False):
        h = h.contiguous()
        out, state = rms_norm(h, weight, eps, triton)
        ctx.save_for_backward(h, state.rstd, weight)
        ctx.state = state.without_rstd()  # rstd goes through saved_tensors (checkpoint-safe)
        return out

    @staticmethod
    def backward(ctx, dx: Tensor):
        h, rstd, weight = ctx.saved_tensors
        return rms_norm_grad(dx, h, weight, ctx.state.with_rstd(rstd)), None, None, None


class NormLoraMLPFunction(torch.autograd.Function):
    """RMSNorm → SwiGLU MLP whose gate/up/down are LoRA layers over frozen bases.

    Saves the block input h (tokens, hidden), rstd, gate and up outputs (tokens, inter) and the three
    (tokens, r) LoRA activations; recomputes the norm, dropout masks and silu(gate) * up in backward.
    ``triton`` runs the norm and SiLU·mul parts as Triton kernels (CUDA, see kernels.py); ``keep_dense``
    and ``device_seeds`` as for ``LoraLinearFunction``. ``output_needed=False`` (the run that recomputes a
    layer for its backward, whose output nobody reads): the down projection's frozen matmul, a quarter of
    an 8B layer's forward, is skipped and the output is zeros; what backward reads is computed as always.
    """

    @staticmethod
    def forward(ctx, h: Tensor, norm_weight: Tensor, eps: float, bases: tuple[nn.Module, ...],
                scales: tuple[float, ...], p: float, ag: Tensor, bg: Tensor, au: Tensor, bu: Tensor,
                ad: Tensor, bd: Tensor, triton: bool = False, keep_dense: bool = False, device_seeds: bool = False,
                nf4_kernel: bool = False, output_needed: bool = True):
        dtype = compute_dtype(h)
        seeds = tuple(new_seed(h.device, device_seeds) if p > 0 else 0 for _ in range(3))
        h = h.contiguous()
        kept: list[Tensor] = []

        def weight(i: int) -> Tensor:  # dequantized at use; held past it only inside a recomputed region
            w = dense_weight(bases[i], dtype, nf4_kernel)
            if keep_dense:
                kept.append(w)
            return w

        with torch.autocast(h.device.type, enabled=False):
            flat = h.reshape(-1, h.shape[-1])
            x, state = rms_norm(flat, norm_weight, eps, triton)  # (tokens, hidden)
            x = x.to(dtype)
            gate, low_g = _lora_forward(x, weight(0), ag.to(dtype), bg.to(dtype), scales[0], p, seeds[0], bases[0].bias)
            up, low_u = _lora_forward(x, weight(1), au.to(dtype), bu.to(dtype), scales[1], p, seeds[1], bases[1].bias)
            del x
            act = silu_mul(gate, up, triton)  # (tokens, inter)
            if output_needed:
                y, low_d = _lora_forward(act, weight(2), ad.to(dtype), bd.to(dtype), scales[2], p, seeds[2],
                                         bases[2].bias)
            else:  # only backward reads this run: low_d; the output is a stand-in of its shape
                low_d = _lora_low(act, ad.to(dtype), p, seeds[2])
                y = act.new_zeros(()).expand(act.shape[0], bd.shape[0])
        ctx.save_for_backward(h, state.rstd, norm_weight, gate, up, low_g, low_u, low_d, ag, bg, au, bu, ad, bd, *kept)
        ctx.state = state.without_rstd()
        ctx.bases, ctx.scales, ctx.p, ctx.seeds, ctx.eps, ctx.dtype = bases, scales, p, seeds, eps, dtype
        ctx.triton, ctx.nf4_kernel = triton, nf4_kernel
        return y.reshape(*h.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy: Tensor):
        h, rstd, norm_weight, gate, up, low_g, low_u, low_d, ag, bg, au, bu, ad, bd, *kept = ctx.saved_tensors
        dtype, p, seeds, scales, bases, triton = ctx.dtype, ctx.p, ctx.seeds, ctx.scales, ctx.bases, ctx.triton
        state: RmsState = ctx.state.with_rstd(rstd)
        dense = kept + [None] * (3 - len(kept))  # the down weight is not kept when its matmul was skipped
        weight = lambda i: dense[i] if dense[i] is not None else dense_weight(bases[i], dtype, ctx.nf4_kernel)  # noqa: E731
        flat = h.reshape(-1, h.shape[-1])
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dtype)
        act = silu_mul(gate, up, triton)
        d_act, grad_ad, grad_bd = _lora_backward(dy2, act, low_d, weight(2), ad.to(dtype), bd.to(dtype), scales[2],
                                                 p, seeds[2], True)
        del act
        # The Triton path writes d_gate / d_up over gate / up (saved tensors, not needed after this).
        d_gate, d_up = silu_mul_grad(gate, up, d_act, triton)
        del d_act
        x = rms_norm(flat, norm_weight, ctx.eps, triton)[0].to(dtype)
        dx, grad_ag, grad_bg = _lora_backward(d_gate, x, low_g, weight(0), ag.to(dtype), bg.to(dtype), scales[0], p,
                                              seeds[0], True)
        dx_up, grad_au, grad_bu = _lora_backward(d_up, x, low_u, weight(1), au.to(dtype), bu.to(dtype), scales[1], p,
                                                 seeds[1], True)
        dx += dx_up
        del dx_up, x, d_gate, d_up
        dh = rms_norm_grad(dx.to(h.dtype), flat, norm_weight, state, overwrite_dx=True).reshape(h.shape)
        grads = [g.to(t.dtype) for g, t in ((grad_ag, ag), (grad_bg, bg), (grad_au, au), (grad_bu, bu),
                                            (grad_ad, ad), (grad_bd, bd))]
        return (dh, None, None, None, None, None, *grads, None, None, None, None, None)
