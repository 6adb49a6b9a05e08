"""The fused path's modules: a PEFT LoRA linear as one fused function, and a decoder layer built from them.

Each module takes the place of the one it replaces (``patch.py``) and adopts that module's children under
the same names, so parameter names, state dicts and PEFT's saved adapters are unchanged; what it needs
to know is a frozen settings object given when it is made, never an attribute hung on another library's
module and never a rebound function.

``FastDecoderLayer`` computes the allow-listed Llama-shaped layer (``architectures.py``):

    h = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))    n = input_layernorm(x)
    y = h + down_proj(silu(gate_proj(m)) * up_proj(m))                         m = post_attention_layernorm(h)

The attention is transformers' own code path written out (projections, RoPE, transformers' attention
function with the arguments the architecture passes), so the RoPE kernel can be called in place of the
architecture's ``apply_rotary_pos_emb`` and each projection can be told it runs in a recomputed region.
Recompute: ``attention`` checkpoints the attention block; ``offload`` recomputes the whole layer from
its input kept in host memory (``offload.py``), skipping in that second run the down projection's frozen
matmul, whose output backward never reads, and dequantizing weights again in backward rather than holding
a layer's dense weights from the recomputation to its backward (offload is the least-memory plan);
``none`` keeps everything.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lorafleet.train.fast.fused_lora import LoraLinearFunction, NormLoraMLPFunction, RMSNormFunction
from lorafleet.train.fast.memory import Recompute
from lorafleet.train.fast.offload import HostCopies, HostStash, OffloadedLayerFunction

Rope = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]  # (q, k, cos, sin) -> rotated (q, k)


@dataclass(frozen=True)
class LoraParts:
    """The static numbers of a PEFT LoRA linear with one plain active adapter."""

    adapter: str
    scale: float
    dropout: float


def lora_parts(module: nn.Module) -> LoraParts | None:
    """LoraParts of a PEFT LoRA linear with one plain active adapter, or None when the fused function
    would not compute what PEFT does (DoRA or another variant, merged, disabled, several adapters)."""
    if not hasattr(module, "lora_A") or getattr(module, "merged", False) or module.disable_adapters:
        return None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(active) != 1 or getattr(module, "use_dora", {}).get(active[0], False):
        return None
    name = active[0]
    if name in getattr(module, "lora_variant", {}):
        return None
    dropout = module.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, nn.Dropout) else 0.0
    return LoraParts(name, float(module.scaling[name]), p)


class FusedLoraLinear(nn.Module):
    """A PEFT LoRA linear (``base(x) + B(A(dropout(x))) * scale``) computed by ``LoraLinearFunction``."""

    def __init__(self, peft_linear: nn.Module, parts: LoraParts, device_seeds: bool, nf4_kernel: bool = False):
        super().__init__()
        for name, child in peft_linear.named_children():  # base_layer, lora_A, lora_B, ...: same names
            self.add_module(name, child)
        self.parts = parts
        self.device_seeds = device_seeds
        self.nf4_kernel = nf4_kernel  # the plan's: NF4 weights dequantized by nf4_kernel.py
        self.train(peft_linear.training)

    @property
    def base(self) -> nn.Module:
        """The frozen linear under the adapter (nn.Linear or bitsandbytes Linear4bit)."""
        base = self.base_layer
        while hasattr(base, "base_layer"):
            base = base.base_layer
        return base

    @property
    def p(self) -> float:
        return self.parts.dropout if self.training else 0.0

    def weights(self) -> tuple[Tensor, Tensor]:
        """(lora_A weight (r, in), lora_B weight (out, r))."""
        return self.lora_A[self.parts.adapter].weight, self.lora_B[self.parts.adapter].weight

    def forward(self, x: Tensor, keep_dense: bool = False) -> Tensor:
        """``keep_dense``: the call runs in a region recomputed in backward (see fused_lora.py)."""
        a, b = self.weights()
        return LoraLinearFunction.apply(x, a, b, self.base, self.parts.scale, self.p, keep_dense, self.device_seeds,
                                        self.nf4_kernel)


@dataclass(frozen=True)
class LayerSettings:
    """How one ``FastDecoderLayer`` computes, fixed by the plan when the layer is made."""

    recompute: Recompute  # none, attention or offload
    fused_mlp: bool  # RMSNorm + MLP as NormLoraMLPFunction (its three projections are FusedLoraLinear)
    triton: bool  # Triton RMSNorm and SiLU·mul
    device_seeds: bool  # dropout seeds drawn on the device (CUDA graphs)
    nf4_kernel: bool  # NF4 weights dequantized by nf4_kernel.py
    rope: Rope  # Liger's RoPE kernel or the architecture's apply_rotary_pos_emb
    eager_attention: Callable  # the architecture's eager attention, transformers' fallback
    attention_kwargs: Mapping[str, Any] = field(default_factory=dict)  # e.g. sliding_window
    draws_random: bool = True  # LoRA or attention dropout: an offload recomputation restores the RNG state
    # Passes carry no attention mask (right-padded rows, no packing: the plan's pad_multiple), so attention is causal
    # alone. transformers cannot prove rows unpacked while a CUDA graph is being captured (its check reads a tensor)
    # and then builds a full causal mask: cuDNN attention left its causal kernels (3x slower in the graphed profile,
    # BENCHMARKS.md round 10) and flash attention refused the pass. The layer drops that mask.
    unmasked: bool = False


def _project(module: nn.Module, x: Tensor, keep_dense: bool) -> Tensor:
    return module(x, keep_dense=keep_dense) if isinstance(module, FusedLoraLinear) else module(x)


class FastDecoderLayer(nn.Module):
    """A decoder layer of an allow-listed architecture, computed by the fused functions."""

    def __init__(self, layer: nn.Module, settings: LayerSettings, copies: HostCopies | None = None,
                 stash: HostStash | None = None):
        super().__init__()
        for name, child in layer.named_children():  # self_attn, mlp, input_/post_attention_layernorm
            self.add_module(name, child)
        self.settings = settings
        self.copies = copies  # host copies of offloaded inputs, shared by the model's layers
        self.stash = stash  # the pinned host memory this layer's offloaded input goes to
        self.train(layer.training)

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        """Keyword arguments are those transformers passes its decoder layers (mask, positions, RoPE)."""
        kwargs["use_cache"] = False
        kwargs["past_key_values"] = None
        if self.settings.recompute == "offload" and self.training and torch.is_grad_enabled():
            def run(hidden: Tensor, recomputing: bool) -> Tensor:
                return self._body(hidden, recompute_attention=False, output_needed=not recomputing, **kwargs)
            return OffloadedLayerFunction.apply(run, hidden_states, torch.empty(0, requires_grad=True),
                                                self.copies, self.stash, self.settings.draws_random)
        recompute_attention = self.settings.recompute == "attention" and self.training
        return self._body(hidden_states, recompute_attention=recompute_attention, **kwargs)

    def _body(self, hidden_states: Tensor, recompute_attention: bool, output_needed: bool = True, **kwargs) -> Tensor:
        """The layer. Dense weights are kept past their use only inside the checkpointed attention (its recomputation
        feeds backward at once); every other run dequantizes them again in backward."""
        if recompute_attention and torch.is_grad_enabled():
            # Checkpointed: the first run's saved tensors are dropped, the recomputation's (dense weights
            # kept) feed this layer's backward and are freed with it.
            attend = functools.partial(self._attention, keep_dense=True, **kwargs)
            attn = checkpoint(attend, hidden_states, use_reentrant=False)
        else:
            attn = self._attention(hidden_states, keep_dense=False, **kwargs)
        hidden_states = hidden_states + attn
        return hidden_states + self._mlp(hidden_states, output_needed)

    def _attention(self, hidden_states: Tensor, keep_dense: bool, position_embeddings: tuple[Tensor, Tensor],
                   attention_mask: Tensor | None = None, past_key_values=None, **kwargs) -> Tensor:
        """RMSNorm + self-attention, as transformers' attention forward computes it (no cache)."""
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        norm, attn = self.input_layernorm, self.self_attn
        normed = RMSNormFunction.apply(hidden_states, norm.weight, norm.variance_epsilon, self.settings.triton)
        input_shape = normed.shape[:-1]
        hidden_shape = (*input_shape, -1, attn.head_dim)
        q = _project(attn.q_proj, normed, keep_dense).view(hidden_shape).transpose(1, 2)  # (batch, heads, seq, d)
        k = _project(attn.k_proj, normed, keep_dense).view(hidden_shape).transpose(1, 2)
        v = _project(attn.v_proj, normed, keep_dense).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = self.settings.rope(q, k, cos, sin)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation,
                                                          self.settings.eager_attention)
        mask = None if self.settings.unmasked else attention_mask
        out, _ = interface(attn, q, k, v, mask, dropout=0.0 if not attn.training else attn.attention_dropout,
                           scaling=attn.scaling, **self.settings.attention_kwargs, **kwargs)
        out = out.reshape(*input_shape, -1).contiguous()  # (batch, seq, heads * d)
        return _project(attn.o_proj, out, keep_dense)

    def _mlp(self, hidden_states: Tensor, output_needed: bool = True) -> Tensor:
        """RMSNorm + SwiGLU MLP: one fused function, or the projections one by one. ``output_needed=False``: a
        recomputation whose output nobody reads (the fused function then skips the down projection's matmul)."""
        norm, mlp = self.post_attention_layernorm, self.mlp
        if self.settings.fused_mlp:
            projections = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            weights = [w for proj in projections for w in proj.weights()]
            return NormLoraMLPFunction.apply(
                hidden_states, norm.weight, norm.variance_epsilon, tuple(proj.base for proj in projections),
                tuple(proj.parts.scale for proj in projections), mlp.gate_proj.p, *weights, self.settings.triton,
                False, self.settings.device_seeds, self.settings.nf4_kernel, output_needed)  # False: keep_dense
        x = norm(hidden_states)
        gate = mlp.act_fn(_project(mlp.gate_proj, x, keep_dense=False))
        return _project(mlp.down_proj, gate * _project(mlp.up_proj, x, keep_dense=False), keep_dense=False)
