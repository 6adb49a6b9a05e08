"""`train_adapter`: a prepared dataset in, an adapter artifact out.

    preflight → setup (data, base model, adapter, speed-up plan, optimizer, resume) → fit → save

Preflight runs before any weights are loaded. The loop is our own (loop.py) on plain PyTorch, so
resume is exact and loss masking, batching and logging are under our control. On CUDA the speed-ups
(`lorafleet.train.fast`) are planned once in setup; everything after it follows the plan.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from lorafleet.artifact import Manifest
from lorafleet.config import TrainConfig
from lorafleet.models import load_tokenizer, resolve_model
from lorafleet.train.build import DTYPES, attach_adapter, build_optimizer, load_base_model, use_expandable_segments
from lorafleet.train.checkpoint import latest_checkpoint, load_checkpoint, load_trainable_state, restore_rng
from lorafleet.train.data import TrainData, open_prepared
from lorafleet.train.distributed import DistInfo, FlatGradients, barrier, broadcast_parameters, init_distributed, training_device
from lorafleet.train.fast import FastPath, enable_speedups
from lorafleet.train.fast.graphs import PassGraphs
from lorafleet.train.loop import PassLoss, Run, StepHook, fit, total_steps
from lorafleet.train.preflight import DeviceInfo, ModelInfo, PreflightResult, preflight
from lorafleet.train.progress import RunLogger
from lorafleet.train.save import RunPaths, build_manifest, check_output, prepare_staging, write_artifact

# Settings that do not change the trained weights, so a resumed run may differ in them.
_NOT_IN_RUN_KEY = {"resume", "force", "tensorboard", "log_every", "max_memory_gb"}


def train_adapter(
    data_dir: Path, out_dir: Path, config: TrainConfig, on_step: StepHook | None = None, show_progress: bool = True
) -> Manifest:
    """Train an adapter on the prepared dataset in `data_dir` and write the artifact to `out_dir`.

    Raises PreflightError (refused configuration), OutputError (existing output / nothing to resume),
    DatasetError, ModelError, ConfigError or CheckpointError, each before training starts.
    Under torchrun every process calls this; only rank 0 writes. Returns the manifest written.
    """
    dist = init_distributed()
    out_dir = Path(out_dir)
    data = open_prepared(data_dir)
    ref = resolve_model(config.model)
    model_info = ModelInfo.read(ref.path)
    checked = preflight(config, data.report, model_info, DeviceInfo.detect(), dist.world_size)
    if dist.is_main:
        for warning in checked.warnings:
            Console(stderr=True).print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    paths = RunPaths(out_dir)
    check_output(paths, config.resume, config.force)
    barrier(dist)
    if dist.is_main:
        prepare_staging(paths, config.resume)
    barrier(dist)

    run, fast = setup(data, paths, config, ref.path, checked, dist, show_progress)
    state = fit(run, on_step)
    if run.graphs is not None:  # their memory pool is not held once training is done (several runs per process)
        run.graphs.close()
        torch.cuda.empty_cache()
    fast.patches.remove()  # the plain PEFT model again: what is saved does not depend on the speed-ups
    if config.keep_best and run.best_adapter is not None:
        load_trainable_state(run.model, run.best_adapter)
    manifest = None
    if dist.is_main:
        manifest = build_manifest(config=config, base_model=ref.name, model_info=model_info, data=data,
                                  target_modules=_target_modules(run.model), state=state, plan=fast.plan)
        manifest = write_artifact(paths, run.model, load_tokenizer(ref.path), manifest)
    barrier(dist)
    if dist.enabled:
        from lorafleet.artifact import load_manifest

        manifest = load_manifest(out_dir)
    return manifest


def setup(data: TrainData, paths: RunPaths, config: TrainConfig, model_path: Path, checked: PreflightResult,
          dist: DistInfo, show_progress: bool) -> tuple[Run, FastPath]:
    """Load model and adapter, plan and apply the speed-ups, build optimizer and schedule, and restore
    a checkpoint on --resume. Returns the run, complete, and the speed-ups applied to its model."""
    device = training_device(dist)
    tokenizer = load_tokenizer(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(config.seed)  # LoRA A init and the first dropout masks
    if device.type == "cuda":
        use_expandable_segments()
    model = attach_adapter(load_base_model(config, model_path, checked.precision, device), config)
    budget = int(config.max_memory_gb * 1e9) if config.max_memory_gb else None
    lengths = [len(s.input_ids) for s in data.train]
    steps = total_steps(config, lengths, dist.world_size)
    seen = steps * config.batch_size * config.grad_accum * dist.world_size / max(len(lengths), 1)  # per row
    fast = enable_speedups(model, config, checked.precision, dist.world_size, data.longest_train_row, budget,
                           row_lengths=lengths, passes_per_row=seen)
    if dist.is_main:
        Console(stderr=True).print(fast.describe(), highlight=False, soft_wrap=True)  # one line, unwrapped
    # The same adapter everywhere (each process seeded alike; this makes it so whatever the init draws);
    # the loop then sums gradients over processes once per step, so the copies stay identical.
    trainable = [p for p in model.parameters() if p.requires_grad]
    broadcast_parameters(trainable, dist)
    # QLoRA computes in bf16 whatever the storage precision.
    autocast = torch.bfloat16 if config.quantization == "nf4" else None if checked.precision == "fp32" else DTYPES[checked.precision]
    loss = PassLoss(model, autocast, fast.plan.fused_loss)
    optimizer, scheduler = build_optimizer(model, fast.plan.optimizer, config, steps)
    run_key = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NOT_IN_RUN_KEY}
    run_key |= {"dataset_sha256": data.sha256, "world_size": dist.world_size}
    run = Run(
        config=config, plan=fast.plan, model=model, loss=loss, optimizer=optimizer, scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type) if checked.precision == "fp16" else None, device=device, dist=dist,
        data=data, pad_token_id=pad_id, checkpoint_dir=paths.checkpoints, run_key=run_key,
        logger=RunLogger(paths.metrics, dist.is_main, config.log_every,
                         paths.tensorboard if config.tensorboard else None, show_progress),
        graphs=PassGraphs(loss, list(model.parameters())) if fast.plan.cuda_graphs else None,
        gradients=FlatGradients(trainable) if dist.enabled else None,  # before any pass adds into .grad
    )
    if config.resume:
        resume(run)
    return run, fast


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
