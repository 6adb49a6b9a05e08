"""``apply_plan``: the one place a model is changed for the fused path, and ``Patches`` to undo it.

It does what the plan says and decides nothing: the storage change (frozen weights or tables to bf16),
each eligible PEFT LoRA linear of a decoder layer replaced by a ``FusedLoraLinear`` and each decoder
layer by a ``FastDecoderLayer`` (both adopt the replaced module's children, so parameter names do not
change). ``Patches.remove`` puts the original modules back; dtype changes stay.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lorafleet.train.fast.architectures import ALLOWED
from lorafleet.train.fast.bf16_tables import store_tables_in_bf16
from lorafleet.train.fast.facts import base_model, decoder_layers
from lorafleet.train.fast.layers import FastDecoderLayer, FusedLoraLinear, LayerSettings, lora_parts
from lorafleet.train.fast.offload import HostCopies, HostStash
from lorafleet.train.fast.plan import SpeedupPlan


@dataclass
class Patches:
    """What ``apply_plan`` changed in a model."""

    replaced: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)  # (parent, name, original)
    hooks: list[RemovableHandle] = field(default_factory=list)
    fused_lora_layers: int = 0
    fused_layers: int = 0
    fused_mlps: int = 0

    def remove(self) -> None:
        """Put every replaced module back (last replaced first) and remove the hooks."""
        for parent, name, original in reversed(self.replaced):
            setattr(parent, name, original)
        for hook in self.hooks:
            hook.remove()
        self.replaced.clear()
        self.hooks.clear()

    def describe(self) -> str:
        return f"{self.fused_layers} fused layers, {self.fused_mlps} fused MLPs, {self.fused_lora_layers} fused LoRA linears"


def apply_plan(model: nn.Module, plan: SpeedupPlan) -> Patches:
    """Change the PEFT-wrapped causal LM ``model`` in place as ``plan`` says (nothing on the plain path)."""
    patches = Patches()
    if not plan.fast:
        return patches
    base = base_model(model)
    if plan.storage == "frozen-bf16":
        for param in model.parameters():
            if not param.requires_grad and param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    elif plan.storage == "bf16-tables":
        hook = store_tables_in_bf16(base)
        if hook is not None:
            patches.hooks.append(hook)
    layers = decoder_layers(base)
    offload = plan.recompute == "offload"
    copies = HostCopies(next(model.parameters()).device) if offload else None
    for index, layer in enumerate(layers):
        if plan.fused_lora:
            _fuse_lora_linears(layer, plan.cuda_graphs, plan.nf4_kernel, patches)
        settings = _layer_settings(layer, base.config.model_type, plan)
        patches.fused_mlps += settings.fused_mlp
        stash = HostStash(plan.pass_tokens) if offload else None
        _replace(layers, str(index), FastDecoderLayer(layer, settings, copies, stash), patches)
        patches.fused_layers += 1
    return patches


def _fuse_lora_linears(layer: nn.Module, device_seeds: bool, nf4_kernel: bool, patches: Patches) -> None:
    for parent in (layer.self_attn, layer.mlp):
        for name, child in list(parent.named_children()):
            parts = lora_parts(child)
            if parts is not None:
                _replace(parent, name, FusedLoraLinear(child, parts, device_seeds, nf4_kernel), patches)
                patches.fused_lora_layers += 1


def _layer_settings(layer: nn.Module, model_type: str, plan: SpeedupPlan) -> LayerSettings:
    attention = layer.self_attn
    code = sys.modules[type(attention).__module__]  # transformers' modeling module of the architecture
    rope = code.apply_rotary_pos_emb
    if plan.rope_kernel:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb as rope
    window = ALLOWED[model_type].sliding_window
    extra = ({"sliding_window": getattr(attention.config, "sliding_window", None)} if window == "config" else
             {"sliding_window": getattr(attention, "sliding_window", None)} if window == "attention" else {})
    projections = [getattr(layer.mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    fused_mlp = (plan.fused_mlp and all(isinstance(p, FusedLoraLinear) for p in projections)
                 and len({p.parts.dropout for p in projections}) == 1)
    draws_random = (any(isinstance(m, nn.Dropout) and m.p > 0 for m in layer.modules())  # PEFT's lora_dropout
                    or float(getattr(attention, "attention_dropout", 0.0)) > 0)
    if draws_random and plan.cuda_graphs and plan.recompute == "offload":  # plan.capture_problem rules this out
        raise ValueError("the plan captures offloaded passes in CUDA graphs, but this layer draws random numbers "
                         "(dropout): its recomputation would draw new ones")
    return LayerSettings(recompute=plan.recompute, fused_mlp=fused_mlp, triton=plan.triton_kernels,
                         device_seeds=plan.cuda_graphs, nf4_kernel=plan.nf4_kernel, rope=rope,
                         eager_attention=code.eager_attention_forward,
                         attention_kwargs=extra, draws_random=draws_random, unmasked=plan.pad_multiple is not None)


def _replace(parent: nn.Module, name: str, module: nn.Module, patches: Patches) -> None:
    patches.replaced.append((parent, name, getattr(parent, name)))
    setattr(parent, name, module)
