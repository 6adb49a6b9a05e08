"""`train_adapter`: a prepared dataset in, an adapter artifact out.

setup (preflight → output folder → base model → adapter → optimizer → resume) → fit → evaluate → save.
Preflight runs before any weights are loaded. The loop is our own (loop.py) on plain PyTorch, so
resume is exact and loss masking, batching and logging are under our control.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path

import torch
from rich.console import Console

from lorafleet.config import TrainConfig
from lorafleet.data.dataset import dataset_sha256, load_report
from lorafleet.models import load_tokenizer, resolve_model
from lorafleet.artifact import Manifest
from lorafleet.train.batching import load_samples
from lorafleet.train.checkpoint import latest_checkpoint, load_checkpoint, load_trainable_state, restore_rng
from lorafleet.train.distributed import DistInfo, barrier, init_distributed, training_device
from lorafleet.train.graphs import PassGraphs, capture_problem
from lorafleet.train.loop import GRAPH_LENGTH_MULTIPLE, Run, StepHook, token_loss_sum, fit
from lorafleet.train.preflight import DeviceInfo, ModelInfo, PreflightResult, preflight
from lorafleet.train.progress import RunLogger
from lorafleet.train.save import RunPaths, check_output, manifest_fields, prepare_staging, write_artifact

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Settings that do not change the trained weights, so a resumed run may differ in them.
_NOT_IN_RUN_KEY = {"resume", "force", "tensorboard", "log_every"}


def train_adapter(
    data_dir: Path, out_dir: Path, config: TrainConfig, on_step: StepHook | None = None, show_progress: bool = True
) -> Manifest:
    """Train an adapter on the prepared dataset in `data_dir` and write the artifact to `out_dir`.

    Raises PreflightError (refused configuration), OutputError (existing output / nothing to resume),
    DatasetError, ModelError, ConfigError or CheckpointError, each before training starts.
    Under torchrun every process calls this; only rank 0 writes. Returns the manifest written.
    """
    dist = init_distributed()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    report = load_report(data_dir)
    ref = resolve_model(config.model)
    model_info = ModelInfo.read(ref.path)
    checked = preflight(config, report, model_info, DeviceInfo.detect())
    if dist.is_main:
        for warning in checked.warnings:
            Console(stderr=True).print(f"[yellow]warning:[/] {warning}", highlight=False)
    paths = RunPaths(out_dir)
    check_output(paths, config.resume, config.force)
    barrier(dist)
    if dist.is_main:
        prepare_staging(paths, config.resume)
    barrier(dist)

    run = setup(data_dir, paths, config, ref.path, checked, dist, show_progress)
    state = fit(run, on_step)
    if config.keep_best and run.best_adapter is not None:
        load_trainable_state(run.model, run.best_adapter)
    manifest = None
    if dist.is_main:
        tokenizer = load_tokenizer(ref.path)
        fields = manifest_fields(
            config, ref.name, model_info.model_fingerprint, model_info.tokenizer_fingerprint, report,
            dataset_sha256(data_dir), _target_modules(run.model), state,
        )
        manifest = write_artifact(paths, run.model, tokenizer, fields)
    barrier(dist)
    if dist.enabled:
        from lorafleet.artifact import load_manifest

        manifest = load_manifest(out_dir)
    return manifest


def setup(data_dir: Path, paths: RunPaths, config: TrainConfig, model_path: Path, checked: PreflightResult, dist: DistInfo, show_progress: bool) -> Run:
    """Load data, model and adapter, build optimizer and schedule, and restore a checkpoint on --resume."""
    device = training_device(dist)
    train, evals = load_samples(data_dir, "train"), load_samples(data_dir, "eval")
    tokenizer = load_tokenizer(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(config.seed)  # LoRA A init and the first dropout masks
    if device.type == "cuda":
        use_expandable_segments()
    model = attach_adapter(load_base_model(config, model_path, checked.precision, device), config)
    applied = enable_speedups(model, config, train, dist) if device.type == "cuda" else None
    forward_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        forward_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    logger = RunLogger(paths.metrics, dist.is_main, config.log_every, paths.tensorboard if config.tensorboard else None, show_progress)
    run_key = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NOT_IN_RUN_KEY}
    run_key |= {"dataset_sha256": dataset_sha256(data_dir), "world_size": dist.world_size}
    run = Run(
        config=config, model=model, forward_model=forward_model, optimizer=None, scheduler=None,  # set below
        scaler=torch.amp.GradScaler(device.type) if checked.precision == "fp16" else None,
        autocast_dtype=None if checked.precision == "fp32" else _DTYPES[checked.precision],
        device=device, dist=dist, train=train, eval=evals, pad_token_id=pad_id,
        checkpoint_dir=paths.checkpoints, run_key=run_key, logger=logger,
    )
    if config.quantization == "nf4":
        run.autocast_dtype = torch.bfloat16  # QLoRA computes in bf16 whatever the storage precision
    if applied is not None:
        run.micro_batch = applied.micro_batch
        run.fused_loss = applied.fused_cross_entropy and not dist.enabled  # DDP needs its own forward
        run.graphs = pass_graphs(run, applied)
        if dist.is_main:
            from lorafleet.train.speedups import describe

            Console(stderr=True).print(describe(applied, config.batch_size), highlight=False)
    run.optimizer, run.scheduler = build_optimizer(model, config, run.total_steps)
    if config.resume:
        resume(run)
    return run


def load_base_model(config: TrainConfig, path: Path, precision: str, device: torch.device) -> torch.nn.Module:
    """The frozen base model on `device`: NF4-quantized for QLoRA, else in the training precision.

    A quantized model is placed on exactly `device` (never device_map="auto", which may spread it
    over CPU and GPU). Gradient checkpointing, when on, is verified to be really on.
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
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[precision], **attention).to(device)
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


def enable_speedups(model: torch.nn.Module, config: TrainConfig, train: list, dist: DistInfo):
    """Apply the CUDA speed-ups the config switches on (speedups.py), planned for batches of
    `batch_size` rows of at most the longest train sample."""
    from lorafleet.train.speedups import apply_speedups, settings_for

    longest = max((len(s.input_ids) for s in train), default=1)
    longest += -longest % GRAPH_LENGTH_MULTIPLE  # rows are padded up to it when graphs run
    settings = settings_for(config)
    if dist.enabled:  # no graphs with DDP (pass_graphs): plan as without them
        settings = dataclasses.replace(settings, cuda_graphs=False)
    return apply_speedups(model, settings, longest, rows=config.batch_size)


def use_expandable_segments() -> None:
    """CUDA allocator segments that grow in place, unless PYTORCH_CUDA_ALLOC_CONF says otherwise. On the
    H200 a captured QLoRA pass (8B shape) reserved 21.0 GB with fixed segments and 17.3 GB with these
    (BENCHMARKS.md, round 6): fixed segments fragment the graph's private pool."""
    if "PYTORCH_CUDA_ALLOC_CONF" not in os.environ:  # the runtime form of that variable (torch has no public one)
        setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
        setter("expandable_segments:True")


def pass_graphs(run: Run, applied) -> PassGraphs | None:
    """The CUDA-graph pass runner when ``cuda_graphs`` is on and the run allows it (logged either way)."""
    config = run.config
    if not config.cuda_graphs:
        return None
    reason = capture_problem(applied.checkpointing, run.dist.enabled, run.scaler is not None, config.packing)
    if reason:
        applied.notes.append(f"CUDA graphs off: {reason}")
        return None
    applied.notes.append("CUDA graphs on")
    params = [p for p in run.model.parameters() if p.requires_grad]
    return PassGraphs(functools.partial(token_loss_sum, run), params)


def build_optimizer(model: torch.nn.Module, config: TrainConfig, total_steps: int):
    """AdamW over the adapter (8-bit AdamW for QLoRA on CUDA, paged if asked) and a cosine schedule with warmup."""
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    if config.quantization == "nf4" and config.paged_optimizer:
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    elif config.quantization == "nf4":
        from lorafleet.train.optim import AdamW8bit

        optimizer = AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        fused = params[0].device.type == "cuda"
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


def resume(run: Run) -> None:
    """Restore adapter weights, optimizer, schedule, RNG and position from the latest checkpoint."""
    folder = latest_checkpoint(run.checkpoint_dir)
    ckpt = load_checkpoint(folder, run.run_key)
    load_trainable_state(run.model, ckpt.adapter)
    run.optimizer.load_state_dict(ckpt.optimizer_state["optimizer"])
    run.scheduler.load_state_dict(ckpt.optimizer_state["scheduler"])
    if run.scaler and "scaler" in ckpt.optimizer_state:
        run.scaler.load_state_dict(ckpt.optimizer_state["scaler"])
    restore_rng(ckpt.rng_states[run.dist.rank])
    run.best_adapter = ckpt.best_adapter
    run.state = ckpt.state
    run.logger.truncate_after(ckpt.state.step)


def _target_modules(model) -> list[str]:
    targets = model.peft_config["default"].target_modules
    return sorted(targets) if not isinstance(targets, str) else [targets]
