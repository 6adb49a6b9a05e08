"""GPU speed-ups that `lorafleet train` applies to a PEFT LoRA/QLoRA Llama-family model on CUDA.

Each speed-up computes the same function as the plain transformers + PEFT path (up to bf16 rounding
order) and can be switched off through :class:`SpeedupSettings`:

* ``fused_lora``: every eligible LoRA linear runs as one fused autograd function (``fused_lora.py``);
* ``fused_mlp``: the post-attention RMSNorm and the whole SwiGLU MLP run as one function that saves
  only its input, gate and up outputs (the seed stack saves or recomputes far more);
* ``fused_elementwise``: RMSNorm and SiLU·mul (forward and backward) as single Triton kernels
  (Liger's; checked against torch once per device, off with a note when missing or different);
* ``triton_dropout`` and ``triton_rope`` (need ``fused_elementwise``): the LoRA dropout masks drawn
  inside one Triton kernel per pass instead of stored and multiplied (``dropout_kernel.py``; always
  used for passes replayed from CUDA graphs, ``graphs.py``, which draw their seeds on the device), and
  Liger's RoPE kernel in the fused attention, each checked once per device. ``lorafleet train`` turns
  the RoPE kernel on (with graphs 1.09× faster on the H200, BENCHMARKS.md round 6); here both default
  to off, as the eager H200 run of round 4 was slower with them;
* ``cuda_graphs`` tells the planner the caller will replay passes from CUDA graphs, which need no
  recompute: then the largest micro-batch that fits without recompute wins;
* ``checkpointing`` and ``micro_batch``: ``plan.py`` picks the largest micro-batch (rows per forward
  pass) that fits the memory budget, then the least recompute for it: none, attention only, or
  whole layers recomputed from inputs kept in pinned host memory (``"offload"``, what makes very
  long contexts train); ``"hf"`` leaves transformers' own choice. Recomputed regions keep the weights
  their recomputation dequantized for that layer's backward (one NF4 dequantization fewer per weight);
* ``fused_cross_entropy``: the loss is computed from hidden states in chunks, never building the
  (tokens, vocab) logits (``linear_ce.py``: no host sync, so CUDA graphs can capture it);
* ``frozen_bf16``: frozen embeddings, norms and head that ``prepare_model_for_kbit_training`` upcast
  to fp32 go back to bf16. The weight values were bf16, so they do not change, but the embedding
  output and with it the residual stream are then carried in bf16 instead of fp32: each residual add
  rounds to bf16, as in plain bf16 LoRA training. Not exact against the QLoRA seed stack, so
  ``lorafleet train`` leaves it off unless asked; it saves 2 bytes per embedding/head weight and
  half the residual activations;
* ``bf16_storage`` (only without ``frozen_bf16``): the frozen fp32 input embedding and output head
  stored in bf16, exactly (``bf16_tables.py``): ~3 GB less at the Llama-8B shape.

On a model without CUDA parameters ``apply_speedups`` changes nothing and says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lorafleet.data.dataset import IGNORE_INDEX
from lorafleet.train.bf16_tables import remove_embedding_hook, store_tables_in_bf16
from lorafleet.train.fused_lora import LoraLinearFunction, NormLoraMLPFunction, RMSNormFunction, keep_dense_weights
from lorafleet.train.kernels import dropout_problem, rope_problem, triton_problem, triton_rope
from lorafleet.train.linear_ce import linear_cross_entropy_sum
from lorafleet.train.offload import OffloadedLayerFunction
from lorafleet.train.plan import (
    MARGIN_BYTES, TRAINABLE_BYTES_PER_PARAM, Checkpointing, ModelDims, plan_micro_batch,
)


@dataclass(frozen=True)
class SpeedupSettings:
    """Switches for the CUDA training speed-ups (all on by default; ``micro_batch`` None = planned)."""

    fused_lora: bool = True
    fused_mlp: bool = True
    fused_elementwise: bool = True
    fused_cross_entropy: bool = True
    frozen_bf16: bool = True
    bf16_storage: bool = True
    triton_dropout: bool = False  # opt-in: slower together with triton_rope on the H200 (round 4)
    triton_rope: bool = False
    checkpointing: Checkpointing = "auto"
    micro_batch: int | None = None
    cuda_graphs: bool = False  # the caller will replay passes from CUDA graphs: plan without recompute first


@dataclass
class AppliedSpeedups:
    """What ``apply_speedups`` actually turned on (for logs and the manifest)."""

    fused_lora_layers: int = 0
    fused_mlps: int = 0
    checkpointing: str = "hf"
    micro_batch: int = 1
    fused_elementwise: bool = False
    triton_dropout: bool = False
    triton_rope: bool = False
    fused_cross_entropy: bool = False
    frozen_bf16: bool = False
    bf16_storage: bool = False
    notes: list[str] = field(default_factory=list)


def _lora_parts(module: nn.Module) -> tuple[Tensor, Tensor, float, float] | None:
    """(lora_A weight, lora_B weight, scale, dropout p) of a PEFT LoRA linear with one plain active
    adapter, or None when the fused path would not be exact (DoRA, merged, disabled, several)."""
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
    return module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name]), p


def _fused_lora_forward(module: nn.Module, x: Tensor, *args, **kwargs) -> Tensor:
    parts = _lora_parts(module)
    if parts is None or args or kwargs:
        return type(module).forward(module, x, *args, **kwargs)
    a, b, scale, p = parts
    return LoraLinearFunction.apply(x, a, b, module.get_base_layer(), scale, p if module.training else 0.0,
                                    getattr(module, "_lorafleet_triton_dropout", False))


def _fused_mlp(mlp: nn.Module, norm: nn.Module, h: Tensor) -> Tensor | None:
    parts = [_lora_parts(getattr(mlp, n, None)) for n in ("gate_proj", "up_proj", "down_proj")]
    if any(part is None for part in parts) or len({part[3] for part in parts}) != 1:
        return None
    p = parts[0][3] if mlp.training else 0.0
    bases = tuple(getattr(mlp, n).get_base_layer() for n in ("gate_proj", "up_proj", "down_proj"))
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    tensors = [t for part in parts for t in part[:2]]
    return NormLoraMLPFunction.apply(h, norm.weight, eps, bases, tuple(part[2] for part in parts), p, *tensors,
                                     mlp._lorafleet_triton, getattr(mlp, "_lorafleet_triton_dropout", False))


def _attention_block(layer: nn.Module, hidden_states: Tensor, **kwargs) -> Tensor:
    norm = layer.input_layernorm
    normed = RMSNormFunction.apply(hidden_states, norm.weight, getattr(norm, "variance_epsilon", 1e-6),
                                   layer._lorafleet_triton)
    with triton_rope(type(layer.self_attn).__module__, layer._lorafleet_rope):
        out, _ = layer.self_attn(hidden_states=normed, **kwargs)
    return out


def _recomputed(fn):
    """``fn`` run with dense weights kept for backward (it is checkpointed: its first run's saved
    tensors are dropped, the recomputation's feed that layer's backward and are freed with it)."""
    def run(*args):
        with keep_dense_weights():
            return fn(*args)
    return run


def _mlp_block(layer: nn.Module, hidden_states: Tensor, fused: bool) -> Tensor:
    out = _fused_mlp(layer.mlp, layer.post_attention_layernorm, hidden_states) if fused else None
    if out is None:
        out = layer.mlp(layer.post_attention_layernorm(hidden_states))
    return out


def _layer_body(layer: nn.Module, fused_mlp: bool, attention_recompute: bool, hidden_states: Tensor,
                **kwargs) -> Tensor:
    attend = functools.partial(_attention_block, layer, **kwargs)
    if attention_recompute and torch.is_grad_enabled():
        attn = checkpoint(_recomputed(attend), hidden_states, use_reentrant=False)
    else:
        attn = attend(hidden_states)
    hidden_states = hidden_states + attn
    return hidden_states + _mlp_block(layer, hidden_states, fused_mlp)


def _layer_forward(layer: nn.Module, hidden_states: Tensor, *args, **kwargs) -> Tensor:
    """Replacement decoder-layer forward; keyword arguments are those transformers passes."""
    mode, fused_mlp = layer._lorafleet_mode, layer._lorafleet_fused_mlp
    kwargs["use_cache"] = False
    kwargs["past_key_values"] = None
    if mode == "offload" and layer.training and torch.is_grad_enabled():
        body = _recomputed(functools.partial(_layer_body, layer, fused_mlp, False, **kwargs))
        return OffloadedLayerFunction.apply(body, hidden_states, torch.empty(0, requires_grad=True))
    return _layer_body(layer, fused_mlp, mode == "attention" and layer.training, hidden_states, **kwargs)


def _base(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    base = _base(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", base)
    return list(getattr(decoder, "layers", []))


def fuse_lora_linears(model: nn.Module, triton_dropout: bool = False) -> int:
    """Route every eligible PEFT LoRA linear through ``LoraLinearFunction`` (any device; ``triton_dropout``
    only on CUDA after ``dropout_problem`` passed); returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and _lora_parts(module) is not None:
            module.forward = functools.partial(_fused_lora_forward, module)
            module._lorafleet_triton_dropout = triton_dropout
            count += 1
    return count


def fuse_layers(model: nn.Module, mode: Checkpointing, fused_mlp: bool = True, triton: bool = False,
                triton_dropout: bool = False, rope: bool = False) -> int:
    """Replace each decoder layer's forward (any device; offload needs CUDA): fused norm + MLP when
    ``fused_mlp``, checkpointing ``mode``; returns the number of layers."""
    layers = _decoder_layers(model)
    for layer in layers:
        if not hasattr(layer, "_lorafleet_saved_gc"):
            layer._lorafleet_saved_gc = getattr(layer, "gradient_checkpointing", False)
        layer.gradient_checkpointing = False
        layer._lorafleet_mode = mode
        layer._lorafleet_fused_mlp = fused_mlp
        layer._lorafleet_triton = triton
        layer._lorafleet_rope = rope
        layer.mlp._lorafleet_triton = triton
        layer.mlp._lorafleet_triton_dropout = triton_dropout
        layer.forward = functools.partial(_layer_forward, layer)
    return len(layers)


def apply_speedups(model: nn.Module, settings: SpeedupSettings, row_tokens: int, rows: int = 1,
                   memory_budget_bytes: int | None = None) -> AppliedSpeedups:
    """Turn on the speed-ups in place on a PEFT-wrapped causal LM; undo with ``remove_speedups``.

    Batches are ``rows`` rows of at most ``row_tokens`` tokens. ``memory_budget_bytes`` is the peak
    the whole training may reach on the device (default: what is allocated now plus 90% of what is
    free); the plan subtracts the weights as they are after the dtype change, 12 bytes per trainable
    parameter and a 512 MiB margin, and gives the rest to activations. The chosen micro-batch (rows
    per forward pass, a divisor of ``rows``) is returned; the caller splits its batches accordingly.
    Models without CUDA parameters are left alone.
    """
    applied = AppliedSpeedups(micro_batch=rows)
    params = list(model.parameters())
    if not params or params[0].device.type != "cuda":
        applied.notes.append("not on CUDA: speed-ups off")
        return applied
    device = params[0].device
    residual_bytes = _base(model).get_input_embeddings().weight.element_size()  # fp32 embeddings: fp32 stream
    if settings.frozen_bf16:
        residual_bytes = 2
        for param in model.parameters():
            if not param.requires_grad and param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
                applied.frozen_bf16 = True
    elif settings.bf16_storage:
        applied.bf16_storage = store_tables_in_bf16(_base(model))
    triton = False
    if settings.fused_elementwise:
        problem = triton_problem(device)
        triton = problem is None
        if problem:
            applied.notes.append(problem)
    applied.fused_elementwise = triton
    if settings.fused_elementwise and settings.triton_dropout:
        problem = dropout_problem(device)
        applied.triton_dropout = problem is None
        if problem:
            applied.notes.append(problem)
    if settings.fused_lora:
        applied.fused_lora_layers = fuse_lora_linears(model, applied.triton_dropout)
    layers = _decoder_layers(model)
    if settings.checkpointing != "hf" and layers and hasattr(layers[0], "self_attn"):
        if memory_budget_bytes is None:
            free, _ = torch.cuda.mem_get_info(device)
            memory_budget_bytes = torch.cuda.memory_allocated(device) + int(free * 0.9)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        fixed = torch.cuda.memory_allocated(device) + TRAINABLE_BYTES_PER_PARAM * trainable + MARGIN_BYTES
        head = _base(model).get_output_embeddings()
        if settings.fused_cross_entropy and head is not None and head.weight.dtype != torch.bfloat16:
            fixed += 2 * head.weight.numel()  # the fused loss's bf16 copy of an fp32 head, made per pass
        fused_mlp = settings.fused_mlp and settings.fused_lora
        micro, mode = plan_micro_batch(rows, row_tokens, ModelDims.from_config(model.config),
                                       memory_budget_bytes - fixed, settings.checkpointing, settings.micro_batch,
                                       triton and fused_mlp, residual_bytes, settings.cuda_graphs)
        if triton and settings.triton_rope:
            problem = rope_problem(device, type(layers[0].self_attn).__module__)
            applied.triton_rope = problem is None
            if problem:
                applied.notes.append(problem)
        fused_layers = fuse_layers(model, mode, fused_mlp, triton, applied.triton_dropout, applied.triton_rope)
        applied.fused_mlps = fused_layers if fused_mlp else 0
        applied.checkpointing, applied.micro_batch = mode, micro
    elif settings.micro_batch:
        applied.micro_batch = settings.micro_batch
    applied.fused_cross_entropy = settings.fused_cross_entropy
    model._lorafleet_speedups = applied
    return applied


def settings_for(config) -> SpeedupSettings:
    """The speed-up switches of a ``TrainConfig`` (``checkpointing: full`` = transformers' own;
    ``frozen_bf16`` only ever touches a QLoRA model, whose frozen fp32 weights were bf16 before)."""
    return SpeedupSettings(
        fused_lora=config.fused_lora, fused_mlp=config.fused_mlp, fused_elementwise=config.fused_elementwise,
        fused_cross_entropy=config.fused_cross_entropy,
        frozen_bf16=config.frozen_bf16 and config.quantization == "nf4",
        bf16_storage=config.bf16_storage, triton_dropout=config.triton_dropout, triton_rope=config.triton_rope,
        checkpointing="hf" if config.checkpointing == "full" else config.checkpointing,
        micro_batch=None if config.micro_batch == "auto" else int(config.micro_batch),
        cuda_graphs=config.cuda_graphs and not config.packing,
    )


def describe(applied: AppliedSpeedups, rows: int) -> str:
    """One line for the training log: what ``apply_speedups`` turned on."""
    parts = [f"fused LoRA linears {applied.fused_lora_layers}", f"fused MLPs {applied.fused_mlps}",
             f"Triton elementwise {'on' if applied.fused_elementwise else 'off'}",
             f"Triton dropout {'on' if applied.triton_dropout else 'off'}",
             f"Triton RoPE {'on' if applied.triton_rope else 'off'}",
             f"checkpointing {applied.checkpointing}", f"micro-batch {applied.micro_batch} of {rows} rows",
             f"fused loss {'on' if applied.fused_cross_entropy else 'off'}",
             f"frozen bf16 {'on' if applied.frozen_bf16 else 'off'}",
             f"bf16 tables {'on' if applied.bf16_storage else 'off'}"]
    return "CUDA speed-ups: " + ", ".join(parts) + "".join(f"; {note}" for note in applied.notes)


def remove_speedups(model: nn.Module) -> None:
    """Undo ``apply_speedups`` (instance forwards, checkpointing flags, the embedding's output cast;
    dtypes stay as they are)."""
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), functools.partial):
            del module.forward
        if hasattr(module, "_lorafleet_saved_gc"):
            module.gradient_checkpointing = module._lorafleet_saved_gc
            for name in ("_lorafleet_saved_gc", "_lorafleet_mode", "_lorafleet_fused_mlp", "_lorafleet_triton",
                         "_lorafleet_rope"):
                delattr(module, name)
        for name in ("_lorafleet_triton", "_lorafleet_triton_dropout"):
            if hasattr(module, name):
                delattr(module, name)
    remove_embedding_hook(_base(model))
    if hasattr(model, "_lorafleet_speedups"):
        del model._lorafleet_speedups


def hidden_state_loss_sum(model: nn.Module, input_ids: Tensor, labels: Tensor, fused: bool = True,
                          **model_kwargs) -> tuple[Tensor, Tensor]:
    """(sum of next-token cross-entropy over labelled positions, number of them as a tensor, so that
    no host sync is forced): labels are shifted here, IGNORE_INDEX positions carry no loss.
    ``fused`` takes the loss from the hidden states in chunks (``linear_ce.py``), never building the
    logits; otherwise the logits are built and the loss taken in fp32."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=input_ids, **model_kwargs).last_hidden_state  # (batch, seq, hidden)
    head = base.get_output_embeddings()
    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    target = labels[:, 1:].reshape(-1)
    count = (target != IGNORE_INDEX).sum()
    if fused and head.bias is None:
        dtype = torch.get_autocast_dtype(flat.device.type) if torch.is_autocast_enabled(flat.device.type) else flat.dtype
        return linear_cross_entropy_sum(flat.to(dtype), head.weight, target), count
    logits = head(flat).float()  # (tokens, vocab)
    return nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum"), count
