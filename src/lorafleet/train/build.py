"""What a run trains with: the frozen base model, its LoRA adapter, the optimizer and the LR schedule."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from lorafleet.config import TrainConfig
from lorafleet.train.fast.plan import Optimizer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def load_base_model(config: TrainConfig, path: Path, precision: str, device: torch.device) -> torch.nn.Module:
    """The frozen base model on `device`: NF4-quantized for QLoRA, else in the training precision.

    A quantized model is placed on exactly `device` (never device_map="auto", which may spread it
    over CPU and GPU). Gradient checkpointing, when on, is verified to be really on (the fast path
    replaces the layers and plans its own recompute; see `lorafleet.train.fast`).
    """
    from transformers import AutoModelForCausalLM

    # Packing relies on flash-attention reading sample boundaries from position_ids (preflight checked it is installed).
    attention = {"attn_implementation": "flash_attention_2"} if config.packing else {}
    if config.quantization == "nf4":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=quant, dtype=torch.bfloat16, device_map={"": device.index}, **attention
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[precision], **attention).to(device)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        # prepare_model_for_kbit_training alone has left the flag off with transformers 5.x.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not model.is_gradient_checkpointing:
            raise RuntimeError("gradient checkpointing was requested but the model did not enable it")
    return model


def attach_adapter(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """Wrap `model` in a PEFT LoRA (or DoRA) adapter; only the adapter's parameters train."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.target_modules, use_rslora=config.rslora, use_dora=config.dora,
        bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def build_optimizer(model: torch.nn.Module, optimizer: Optimizer, config: TrainConfig, total_steps: int):
    """The plan's `optimizer` over the adapter's parameters, and a cosine schedule with warmup."""
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    hyper = {"lr": config.lr, "weight_decay": config.weight_decay}
    if optimizer == "paged-adamw8bit":
        import bitsandbytes as bnb

        built = bnb.optim.PagedAdamW8bit(params, **hyper)
    elif optimizer == "adamw8bit":
        from lorafleet.train.fast.optim import AdamW8bit

        built = AdamW8bit(params, **hyper)
    else:
        built = torch.optim.AdamW(params, fused=optimizer == "adamw-fused", **hyper)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    return built, get_cosine_schedule_with_warmup(built, warmup, total_steps)


def use_expandable_segments() -> None:
    """CUDA allocator segments that grow in place, unless PYTORCH_CUDA_ALLOC_CONF says otherwise. On the
    H200 a captured QLoRA pass (8B shape) reserved 21.0 GB with fixed segments and 17.3 GB with these
    (BENCHMARKS.md, round 6): fixed segments fragment the graph's private pool."""
    if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:  # the runtime form of that variable (torch has no public one)
        setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
        setter("expandable_segments:True")
