"""The training loop: optimizer steps over length-grouped batches, evaluation, early stopping, checkpoints.

Loss is the mean over trained tokens of the whole optimizer step — every micro-batch of every
process — so results do not depend on how a global batch is split into micro-batches or processes:
each process divides its token-loss sum by the global token count, and after the step's last pass the
gradients are summed over processes once (``FlatGradients``, one flat buffer, outside any CUDA
graph), so N processes with micro-batch m update as one process with N·m does. Every process knows the
whole global batch (same order, same seeds), so the step's token counts need no collective.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lorafleet.config import TrainConfig
from lorafleet.data.dataset import IGNORE_INDEX
from lorafleet.train.batching import (
    Sample, collate_causal, collate_packed, collate_padded, epoch_batches, eval_batches, rank_shard, split_step,
)
from lorafleet.train.checkpoint import TrainState, capture_rng, save_checkpoint, trainable_state
from lorafleet.train.data import TrainData
from lorafleet.train.distributed import DistInfo, FlatGradients, all_gather_objects, all_reduce_sum, broadcast_object
from lorafleet.train.fast.graphs import PassGraphs
from lorafleet.train.fast.plan import SpeedupPlan
from lorafleet.train.progress import RunLogger


@dataclass(frozen=True)
class PassLoss:
    """The summed next-token loss of one forward pass, its backward graph attached (a pass = up to
    ``plan.micro_batch`` rows). The fused path takes it from hidden states, never building the logits."""

    model: torch.nn.Module  # the PEFT model (unwrapped: processes sum gradients after the passes, no DDP)
    autocast_dtype: torch.dtype | None
    fused: bool

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        device = batch["labels"].device
        if self.fused:
            from lorafleet.train.fast import hidden_state_loss_sum

            with self.autocast(device):
                return hidden_state_loss_sum(self.model, inputs.pop("input_ids"), batch["labels"], **inputs)[0]
        with self.autocast(device):
            logits = self.model(**inputs, use_cache=False).logits
        return causal_lm_loss_sum(logits, batch["labels"])


def total_steps(config: TrainConfig, lengths: list[int], world_size: int) -> int:
    """Optimizer steps of a run: max_steps, or epochs × global batches per epoch."""
    per_epoch = epoch_batches(lengths, config.batch_size * config.grad_accum, world_size, config.seed, 0,
                              config.length_group_window)
    return config.max_steps or config.epochs * len(per_epoch)


@dataclass
class Run:
    """Everything the loop touches, built complete by the trainer's setup step."""

    config: TrainConfig
    plan: SpeedupPlan  # micro-batch, padding and graphs come from here (lorafleet.train.fast)
    model: torch.nn.Module  # the PEFT model (unwrapped)
    loss: PassLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    device: torch.device
    dist: DistInfo
    data: TrainData
    pad_token_id: int
    checkpoint_dir: Path
    run_key: dict[str, Any]
    logger: RunLogger
    graphs: PassGraphs | None = None  # CUDA graphs replay each pass's forward + backward (fast/graphs.py)
    gradients: FlatGradients | None = None  # on several processes: the .grad views summed once per step
    state: TrainState = field(default_factory=TrainState)
    best_adapter: dict[str, torch.Tensor] | None = None

    @property
    def train(self) -> list[Sample]:
        return self.data.train

    @property
    def eval(self) -> list[Sample]:
        return self.data.eval

    def batches(self, epoch: int) -> list[list[int]]:
        lengths = [len(s.input_ids) for s in self.train]
        c = self.config
        return epoch_batches(lengths, c.batch_size * c.grad_accum, self.dist.world_size, c.seed, epoch, c.length_group_window)

    @property
    def total_steps(self) -> int:
        return total_steps(self.config, [len(s.input_ids) for s in self.train], self.dist.world_size)


StepHook = Callable[[TrainState], None]


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropy where token t predicts label t+1; positions labelled IGNORE_INDEX carry no loss.

    logits: (batch, seq, vocab); labels: (batch, seq).
    """
    # Shift the labels, not the logits: slicing (batch, seq, vocab) logits would copy them.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (batch, seq); the last position predicts nothing
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def _passes(run: Run, samples: list[list[Sample]]) -> list[list[Sample]]:
    """The forward passes of one step: each micro-batch cut into pieces of at most `plan.micro_batch` rows.
    Exact: the loss is a sum over tokens divided by the step's global token count either way."""
    size = run.plan.micro_batch
    return [mb[i : i + size] for mb in samples for i in range(0, len(mb), size)]


def _collate(run: Run, samples: list[Sample]) -> dict[str, torch.Tensor]:
    if run.config.packing:
        batch = collate_packed(samples)
    elif run.plan.pad_multiple:
        batch = collate_causal(samples, run.pad_token_id, run.plan.pad_multiple, run.plan.pad_widths)
    else:
        batch = collate_padded(samples, run.pad_token_id)
    return {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}


def train_step(run: Run, step_batch: list[int]) -> tuple[float, int, float]:
    """One optimizer step over the global batch ``step_batch`` (this process runs its share);
    returns (loss, global input tokens, grad norm)."""
    world = run.dist.world_size
    micro_batches = [rank_shard(b, run.dist.rank, world) for b in split_step(step_batch, run.config.grad_accum, world)]
    samples = _passes(run, [[run.train[i] for i in mb] for mb in micro_batches])
    trained_tokens = sum(run.train[i].trained_tokens for i in step_batch)  # every process's shards together
    input_tokens = sum(len(run.train[i].input_ids) for i in step_batch)
    scale = 1.0 / max(trained_tokens, 1)  # the global count: the processes' gradients are summed below
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)  # read back once, after the last pass
    run.model.train()
    for mb in samples:
        batch = _collate(run, mb)
        if run.graphs is not None:  # no scaler (the plan): forward + backward in one replay
            loss_sum += run.graphs.run(batch, scale).double()
            continue
        token_loss = run.loss(batch)
        loss = token_loss * scale
        (run.scaler.scale(loss) if run.scaler else loss).backward()
        loss_sum += token_loss.detach().double()
    params = [p for p in run.model.parameters() if p.requires_grad]
    if run.gradients is not None:
        run.gradients.all_reduce(run.dist)
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, run.config.max_grad_norm)
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    # A graph adds into the same .grad tensors, and FlatGradients sums views of one buffer: zero them in place.
    run.optimizer.zero_grad(set_to_none=run.graphs is None and run.gradients is None)
    total = all_reduce_sum(loss_sum, run.dist).item()
    return total / max(trained_tokens, 1), int(input_tokens), float(grad_norm)


@torch.no_grad()
def evaluate(run: Run) -> float | None:
    """Mean token loss over the eval split (sharded over processes); None when the split is empty.

    Batches of at most a training pass's rows, through the pass's loss (the fused one from hidden states
    when the plan has it): evaluation then never needs more memory than the plan gave a training pass,
    so a run stays within max_memory_gb (full logits of a 128k vocabulary are gigabytes). Rows are collated
    as training collates them: without a mask when the plan pads (its layers then attend causally alone).
    """
    if not run.eval:
        return None
    run.model.eval()
    lengths = [len(s.input_ids) for s in run.eval]
    totals = torch.zeros(2, dtype=torch.float64)
    for idx in eval_batches(lengths, run.plan.micro_batch, run.dist.rank, run.dist.world_size):
        samples = [run.eval[i] for i in idx]
        if run.plan.pad_multiple:
            batch = collate_causal(samples, run.pad_token_id, run.plan.pad_multiple)
        else:
            batch = collate_padded(samples, run.pad_token_id)
        batch = {k: v.to(run.device) for k, v in batch.items()}
        totals[0] += run.loss(batch).double().cpu()
        totals[1] += sum(s.trained_tokens for s in samples)
    loss_sum, tokens = all_reduce_sum(totals, run.dist).tolist()
    return loss_sum / tokens if tokens else None


def _record_eval(run: Run) -> None:
    """Evaluate, track the best adapter and the early-stopping counter."""
    loss = evaluate(run)
    state = run.state
    state.eval_loss = loss
    if loss is None:
        return
    run.logger.log_eval(state.step, loss)
    if state.best_eval_loss is None or loss < state.best_eval_loss - run.config.early_stopping_min_delta:
        state.best_eval_loss, state.best_step, state.evals_without_improvement = loss, state.step, 0
        if run.config.keep_best:
            run.best_adapter = trainable_state(run.model)
    else:
        state.evals_without_improvement += 1


def checkpoint(run: Run) -> None:
    """Save a checkpoint of the current state (rank 0 writes; every rank contributes its RNG state)."""
    rng_states = all_gather_objects(capture_rng(), run.dist)
    if run.dist.is_main:
        optimizer_state = {"optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict()}
        if run.scaler:
            optimizer_state["scaler"] = run.scaler.state_dict()
        save_checkpoint(
            run.checkpoint_dir, run.state, run.run_key, trainable_state(run.model), run.best_adapter, optimizer_state, rng_states
        )
        run.logger.flush()
    broadcast_object(None, run.dist)  # nobody races ahead of a checkpoint being written


def fit(run: Run, on_step: StepHook | None = None) -> TrainState:
    """Train from `run.state` until the epochs or max_steps are done or early stopping fires.

    Checkpoints at the end of every epoch and every `save_every` steps. `on_step` is called after
    each optimizer step (after any checkpoint of that step) with the current state.
    """
    config, state = run.config, run.state
    total_steps = run.total_steps
    run.logger.start(total_steps, state.step)
    last_eval_step = -1
    while state.step < total_steps and not state.stopped_early:
        steps = run.batches(state.epoch)  # one global batch per optimizer step
        if not steps:
            raise ValueError(f"the train split ({len(run.train)} samples) is too small for {run.dist.world_size} processes")
        for step_batch in steps[state.batch_in_epoch :]:
            started = time.perf_counter()
            loss, tokens, grad_norm = train_step(run, step_batch)
            elapsed = time.perf_counter() - started
            state.step += 1
            state.batch_in_epoch += 1
            state.tokens_seen += tokens
            state.train_loss = loss
            state.wall_time_s += elapsed
            lr = run.scheduler.get_last_lr()[0]
            run.logger.log_step(state, loss, lr, grad_norm, tokens / elapsed if elapsed > 0 else 0.0)
            if config.eval_every and state.step % config.eval_every == 0:
                _record_eval(run)
                last_eval_step = state.step
                patience = config.early_stopping_patience
                state.stopped_early = patience is not None and state.evals_without_improvement >= patience
            epoch_done = state.batch_in_epoch >= len(steps)
            if epoch_done:
                state.epoch += 1
                state.batch_in_epoch = 0
            if epoch_done or (config.save_every and state.step % config.save_every == 0):
                checkpoint(run)
            if on_step:
                on_step(state)
            if state.step >= total_steps or state.stopped_early:
                break
    if last_eval_step != state.step:
        _record_eval(run)
    run.logger.finish(state)
    return state

