"""``plan_speedups``: every speed-up decision of a run, made once, as a pure function of its inputs.

Inputs are the config, the resolved precision, the number of processes, and the facts read from the
device and the model (``facts.py``); the output is a frozen ``SpeedupPlan`` that everything downstream
reads (``patch.py`` applies it, the loop, the optimizer and the graphs follow it) and nothing re-decides.
The training log prints ``SpeedupPlan.describe()``, the manifest stores ``SpeedupPlan.summary()``.

The order of the decision: CPU or switched off → plain path; an architecture off the allow-list → plain
path; then storage, kernels, loss, CUDA graphs (and why not), and the memory plan (micro-batch and
recompute, ``memory.py``), which prefers no recompute when graphs would run; graphs then run only when
the memory plan needs no recompute, or host offload without dropout (``capture_problem``), with pad widths
chosen from the rows' lengths (``length_buckets``). The optimizer is chosen on every path.

Several processes (torchrun): each process plans for its own GPU; the processes sum their LoRA gradients
once per optimizer step outside every pass (``train/distributed.py``, in place: the gradients are views of
the buffer that is all-reduced), so graphs, the fused loss, the rest and the memory plan apply as on one
process. A configuration that cannot run on several processes is refused (``data_parallel_problem``),
before the weights load when the config alone says so.

An explicit memory budget (``max_memory_gb``) is a limit: the plan records the budget and the peak it
expects, and refuses a run whose least-memory plan would still exceed the budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lorafleet.config import TrainConfig
from lorafleet.train.fast.architectures import architecture_problem, padding_problem
from lorafleet.train.fast.buckets import length_buckets
from lorafleet.train.fast.facts import DeviceFacts, ModelFacts
from lorafleet.train.fast.memory import (
    MARGIN_BYTES, Recompute, activation_bytes_per_token, plan_micro_batch, trainable_bytes_per_param,
)

Storage = Literal["as-loaded", "bf16-tables", "frozen-bf16"]
Optimizer = Literal["adamw", "adamw-fused", "adamw8bit", "paged-adamw8bit"]
PAD_MULTIPLE = 64  # with CUDA graphs, rows are padded to a multiple of this: one graph per length bucket
FREE_MEMORY_SHARE = 0.9  # without an explicit budget a run may take what is allocated plus 90% of what is free
# Measured on the H200 (tests/train/test_trainer_cuda_budget.py): a graphed run under a budget, on rows of several
# lengths, allocated at most 2.0 GB but reached 4.3-4.8 GB reserved (each new length's eager warm-up runs beside the
# graphs' pool; part may have been an earlier run's pool in the same process: not settled). Eager runs stayed within.
BUDGET_WITH_LENGTHS = ("max_memory_gb with rows of several lengths (each new length's eager warm-up runs beside the "
                       "graphs' memory pool, which the budget does not hold)")


class PlanError(ValueError):
    """The run is refused: the message says why and what to change."""


@dataclass(frozen=True)
class SpeedupPlan:
    """What a run does, decided once by ``plan_speedups``."""

    fast: bool  # the fused path: decoder layers and LoRA linears replaced (patch.py); False = plain PEFT
    rows: int  # rows per micro-batch (batch_size)
    micro_batch: int  # rows per forward pass, a divisor of rows
    recompute: Recompute  # none / attention / offload (fused layers) or transformers / none (plain path)
    optimizer: Optimizer
    fused_lora: bool = False
    fused_mlp: bool = False
    triton_kernels: bool = False  # Triton RMSNorm and SiLU·mul
    rope_kernel: bool = False  # Liger's RoPE in the fused attention
    nf4_kernel: bool = False  # NF4 weights dequantized by nf4_kernel.py instead of bitsandbytes
    fused_loss: bool = False  # loss from hidden states, never the logits
    cuda_graphs: bool = False  # passes replayed from CUDA graphs, dropout seeds drawn on the device
    storage: Storage = "as-loaded"
    pad_multiple: int | None = None  # rows right-padded to a multiple of this, without a mask (graphs)
    pad_widths: tuple[int, ...] = ()  # graphs: each pass right-padded to the first of these that holds it
    pass_tokens: int = 0  # fused path: the most tokens one pass holds (micro-batch × longest padded row)
    architecture: str = ""
    world_size: int = 1  # processes (torchrun), each planned for its own GPU
    global_batch: int = 0  # rows per optimizer step over all processes: batch_size × grad_accum × world_size
    memory_budget: int = 0  # fused path: the peak bytes the plan had to fit (max_memory_gb, or what the GPU had)
    peak_estimate: int = 0  # fused path: the peak bytes the plan expects (weights, trainable state, activations)
    reasons: tuple[str, ...] = ()  # why something asked for does not apply, one line each

    def describe(self) -> str:
        """One line for the training log."""
        if not self.fast:
            head = f"speed-ups: plain transformers + PEFT path (recompute {self.recompute}"
            return head + f", micro-batch {self.micro_batch} of {self.rows} rows, optimizer {self.optimizer}, " + \
                f"{self._processes()})" + "".join(f"; {r}" for r in self.reasons)
        on = lambda flag: "on" if flag else "off"  # noqa: E731
        parts = [f"fused path ({self.architecture})", f"fused LoRA linears {on(self.fused_lora)}",
                 f"fused MLPs {on(self.fused_mlp)}", f"Triton kernels {on(self.triton_kernels)}",
                 f"RoPE kernel {on(self.rope_kernel)}", f"NF4 kernel {on(self.nf4_kernel)}",
                 f"fused loss {on(self.fused_loss)}",
                 f"CUDA graphs {on(self.cuda_graphs)}{self._widths()}", f"storage {self.storage}", f"recompute {self.recompute}",
                 f"micro-batch {self.micro_batch} of {self.rows} rows", f"optimizer {self.optimizer}", self._processes(),
                 f"planned peak {self.peak_estimate / 1e9:.1f} GB of {self.memory_budget / 1e9:.1f} GB"]
        return "CUDA speed-ups: " + ", ".join(parts) + "".join(f"; {r}" for r in self.reasons)

    def _widths(self) -> str:
        if not self.pad_widths:
            return ""
        many = len(self.pad_widths) > 1
        return f" ({len(self.pad_widths)} row width{'s' if many else ''}, {', '.join(map(str, self.pad_widths))} tokens)"

    def _processes(self) -> str:
        return f"{self.world_size} process{'es' if self.world_size > 1 else ''}, global batch {self.global_batch} rows"

    def summary(self) -> dict[str, object]:
        """The plan as plain JSON values (the manifest's ``speedup_plan``)."""
        values = dataclasses.asdict(self)
        values["reasons"] = list(self.reasons)
        return values


def capture_problem(recompute: str, loss_scaling: bool = False, packing: bool = False,
                    dropout: bool = False) -> str | None:
    """Why a training pass cannot be captured as a CUDA graph, or None when it can. Several processes are
    no problem: their gradients are summed after the passes, outside the graphs. Offload recomputes a layer
    from host memory the graph addresses directly (``offload.HostStash``): capturable when nothing in the
    layer is random (``dropout`` false), since a replayed recomputation would draw new dropout seeds."""
    if loss_scaling:
        return "fp16 loss scaling"
    if packing:
        return "packing (flash-attention reads sample boundaries on the host)"
    if recompute == "offload" and dropout:
        return "recompute offload with dropout (recomputed passes redraw dropout seeds)"
    if recompute not in ("none", "offload"):  # checkpoint saves and restores RNG state, which a capture cannot
        return f"recompute {recompute} (recomputed passes redraw dropout seeds)"
    return None


def data_parallel_problem(config: TrainConfig, world_size: int) -> str | None:
    """Why ``config`` cannot train on ``world_size`` processes, or None. Needs no weights: preflight asks it."""
    if world_size > 1 and config.speedups.enabled and config.speedups.recompute == "offload":
        return (f"speedups.recompute offload keeps every layer's input in pinned host memory, sized for one process "
                f"per host; {world_size} processes would each pin that much: train with one process, or set "
                "speedups.recompute to auto or attention")
    return None


def choose_optimizer(config: TrainConfig, device: DeviceFacts) -> Optimizer:
    """8-bit AdamW for QLoRA (bitsandbytes' paged one only when asked: it syncs the GPU per parameter);
    torch's AdamW otherwise, its fused kernel on CUDA."""
    if config.quantization == "nf4":
        return "paged-adamw8bit" if config.speedups.paged_optimizer else "adamw8bit"
    return "adamw-fused" if device.kind == "cuda" else "adamw"


def plain_path_reason(config: TrainConfig, device: DeviceFacts, model: ModelFacts) -> str | None:
    """Why the run must train on the plain transformers + PEFT path, or None when the fused path may run."""
    if device.kind != "cuda":
        return "speed-ups are CUDA-only"
    if not config.speedups.enabled:
        return "speedups.enabled is false"
    problem = architecture_problem(model)
    if problem:
        return problem
    if config.dora:
        return "DoRA (the fused LoRA functions compute plain LoRA): plain path"
    if model.dims is None:
        return "no model shape to plan memory with: plain path"
    return None


def plan_speedups(config: TrainConfig, precision: str, device: DeviceFacts, world_size: int, model: ModelFacts,
                  row_tokens: int, memory_budget: int | None = None, row_lengths: Sequence[int] = (),
                  passes_per_row: float = 1.0) -> SpeedupPlan:
    """Decide every speed-up of a run of ``config`` (``precision`` as preflight resolved it) on ``device``
    with ``world_size`` processes, for rows of at most ``row_tokens`` tokens. ``memory_budget`` is the
    peak the run may reach on the device (default: allocated now + 90% of free). Pure: no I/O.
    Raises PlanError for a run that cannot work on ``world_size`` processes, or that an explicit
    ``memory_budget`` cannot hold even at the least memory the fixed settings allow. ``row_lengths`` (every
    train row's tokens) and ``passes_per_row`` (how often the run sees each) choose the graphs' pad widths
    (``length_buckets``; without them every pass pads to the longest row), and say whether the rows pad to more
    than one 64-token bucket (then several graphs and eager warm-ups share the GPU)."""
    problem = data_parallel_problem(config, world_size)
    if problem:
        raise PlanError(problem)
    lengths_vary = len({-(-n // PAD_MULTIPLE) for n in row_lengths}) > 1
    lora_dropout = config.lora_dropout > 0
    s = config.speedups
    rows = config.batch_size
    fixed_micro = s.micro_batch if isinstance(s.micro_batch, int) else None
    plain = SpeedupPlan(fast=False, rows=rows, micro_batch=fixed_micro or rows,
                        recompute="transformers" if config.gradient_checkpointing else "none",
                        optimizer=choose_optimizer(config, device), architecture=model.model_type,
                        world_size=world_size, global_batch=rows * config.grad_accum * world_size)
    problem = plain_path_reason(config, device, model)
    if problem:
        if memory_budget is not None:  # said, not silently dropped: the plain path plans no memory
            problem += ("; max_memory_gb bounds GPU memory, unused on a CPU" if device.kind != "cuda" else
                        "; max_memory_gb is not held on the plain path (only the fused path plans memory)")
        return dataclasses.replace(plain, reasons=(problem,))
    reasons: list[str] = []
    storage: Storage = "as-loaded"
    if s.frozen_bf16 and config.quantization == "nf4":
        storage = "frozen-bf16"
    elif s.bf16_storage and model.bf16_table_bytes:
        if precision == "bf16" or config.quantization == "nf4":  # the head's matmul must run under bf16 autocast
            storage = "bf16-tables"
        else:
            reasons.append(f"bf16 tables off: they need bf16 autocast, the run computes in {precision}")
    triton = s.fused_elementwise and device.triton_problem is None
    if s.fused_elementwise and device.triton_problem:
        reasons.append(device.triton_problem)
    rope = s.triton_rope and triton and device.rope_problem is None
    if s.triton_rope and triton and device.rope_problem:
        reasons.append(device.rope_problem)
    nf4_kernel = s.triton_dequant and model.nf4_weights > 0 and device.dequant_problem is None \
        and model.nf4_layout_problem is None
    if s.triton_dequant and model.nf4_weights and not nf4_kernel:
        reasons.append(device.dequant_problem or f"Triton NF4 dequantization off: {model.nf4_layout_problem}")
    fused_loss = s.fused_cross_entropy and not model.head_has_lora
    if s.fused_cross_entropy and not fused_loss:
        reasons.append("fused loss off: the head has a LoRA adapter")
    graphs_problem = None
    if s.cuda_graphs:
        graphs_problem = (capture_problem("none", precision == "fp16", config.packing)
                          or padding_problem(model)
                          or (device.dropout_problem if lora_dropout else None)
                          or (BUDGET_WITH_LENGTHS if memory_budget is not None and lengths_vary else None))
        if graphs_problem:
            reasons.append(f"CUDA graphs off: {graphs_problem}")
    wants_graphs = s.cuda_graphs and graphs_problem is None
    tokens = row_tokens + (-row_tokens % PAD_MULTIPLE if wants_graphs else 0)

    # Memory: weights as they will be after the storage change, trainable state, margin, the fused loss's
    # bf16 copy of a head that stays in fp32; activations get the rest of the budget.
    saved = {"frozen-bf16": model.frozen_fp32_bytes, "bf16-tables": model.bf16_table_bytes}.get(storage, 0)
    allocated = device.allocated_bytes - saved
    budget = memory_budget if memory_budget is not None else allocated + int(device.free_bytes * FREE_MEMORY_SHARE)
    head_bf16 = (model.head_is_bf16 or (storage == "frozen-bf16" and model.head_is_frozen_fp32)
                 or (storage == "bf16-tables" and model.head_is_bf16_table))
    fixed = allocated + trainable_bytes_per_param(plain.optimizer) * model.trainable_params + MARGIN_BYTES
    if fused_loss and not head_bf16:
        fixed += 2 * model.head_numel
    residual_bytes = 2 if storage == "frozen-bf16" else model.embed_element_size
    fused_mlp = s.fused_mlp and s.fused_lora
    # Dropout masks count where torch draws them (offload with dropout runs eagerly).
    micro, recompute = plan_micro_batch(rows, tokens, model.dims, budget - fixed, s.recompute, fixed_micro,
                                        triton and fused_mlp, residual_bytes, wants_graphs, lora_dropout)
    estimate = fixed + micro * tokens * activation_bytes_per_token(model.dims, recompute, triton and fused_mlp,
                                                                   residual_bytes, lora_dropout)
    if memory_budget is not None and estimate > memory_budget:  # an explicit budget is a limit, not a hint
        raise PlanError(f"max_memory_gb {memory_budget / 1e9:.2f}: this run needs about {estimate / 1e9:.2f} GB even with "
                        f"micro-batch {micro} and recompute {recompute} (weights and trainable state "
                        f"{fixed / 1e9:.2f} GB, activations for rows of {tokens} tokens the rest); raise max_memory_gb, "
                        "or lower the dataset's max_seq_length or lora_r")
    if recompute == "offload" and world_size > 1:  # auto found nothing else that fits
        raise PlanError(f"{rows} rows of {tokens} tokens fit this GPU's memory only with speedups.recompute offload, "
                        f"which needs one process per host (pinned host memory); on {world_size} processes lower "
                        "batch_size or the dataset's max_seq_length, or train with one process")
    recompute_problem = capture_problem(recompute, dropout=lora_dropout or model.attention_dropout > 0)
    graphs = wants_graphs and recompute_problem is None
    if wants_graphs and not graphs:
        why = "needed to fit the memory" if s.recompute == "auto" else "speedups.recompute"
        reasons.append(f"CUDA graphs off: {recompute_problem} ({why})")
    widths = length_buckets(row_lengths or (row_tokens,), PAD_MULTIPLE, passes_per_row, micro) if graphs else ()
    return SpeedupPlan(
        fast=True, rows=rows, micro_batch=micro, recompute=recompute, optimizer=plain.optimizer,
        fused_lora=s.fused_lora, fused_mlp=fused_mlp, triton_kernels=triton, rope_kernel=rope, nf4_kernel=nf4_kernel,
        fused_loss=fused_loss,
        cuda_graphs=graphs, storage=storage, pad_multiple=PAD_MULTIPLE if graphs else None, pad_widths=widths,
        pass_tokens=micro * tokens,
        architecture=model.model_type, world_size=world_size, global_batch=plain.global_batch, memory_budget=budget,
        peak_estimate=estimate, reasons=tuple(reasons),
    )
