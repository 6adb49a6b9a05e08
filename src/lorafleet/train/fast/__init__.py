"""The CUDA speed-ups of `lorafleet train`, behind one entrance: read the facts, plan once, apply the plan.

    fast = enable_speedups(model, config, precision, world_size, row_tokens)   # facts → plan → patches
    fast.plan         # SpeedupPlan: every decision and why (plan.py); the log line and the manifest print it
    fast.patches      # what was changed in the model; fast.patches.remove() undoes it

What each part is:

* ``plan.py``         ``plan_speedups``, the pure decision (tested as a table without a GPU);
* ``facts.py``        what the plan reads from the device and the model;
* ``architectures.py`` the allow-list of architectures the fused path computes exactly;
* ``memory.py``       the memory estimate and the micro-batch / recompute plan;
* ``buckets.py``      the pad widths of a graphed run (one graph each);
* ``patch.py``, ``layers.py`` the fused decoder layers and LoRA linears that replace PEFT's;
* ``fused_lora.py``, ``kernels.py``, ``dropout_kernel.py``, ``nf4_kernel.py``, ``offload.py`` the autograd
  functions and kernels they run; ``linear_ce.py`` the loss from hidden states;
* ``graphs.py``       forward + backward passes replayed from CUDA graphs;
* ``bf16_tables.py``, ``optim.py`` exact bf16 storage of frozen tables, the 8-bit AdamW without syncs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from lorafleet.config import TrainConfig
from lorafleet.train.fast.facts import DeviceFacts, ModelFacts
from lorafleet.train.fast.linear_ce import hidden_state_loss_sum
from lorafleet.train.fast.patch import Patches, apply_plan
from lorafleet.train.fast.plan import SpeedupPlan, plan_speedups

__all__ = ["FastPath", "SpeedupPlan", "enable_speedups", "hidden_state_loss_sum", "plan_speedups"]


@dataclass
class FastPath:
    """A model's speed-up plan and the changes made to follow it."""

    plan: SpeedupPlan
    patches: Patches

    def describe(self) -> str:
        """The training log's line: the plan, and on the fused path what was replaced."""
        line = self.plan.describe()
        return f"{line} ({self.patches.describe()})" if self.plan.fast else line


def enable_speedups(model: nn.Module, config: TrainConfig, precision: str, world_size: int, row_tokens: int,
                    memory_budget: int | None = None, row_lengths: Sequence[int] = (),
                    passes_per_row: float = 1.0) -> FastPath:
    """Plan the speed-ups of a run of ``config`` for the PEFT-wrapped ``model`` (on its device, its
    adapter attached, before the optimizer exists) and apply them. ``row_tokens`` is the longest row of
    the train split; ``memory_budget`` caps the run's peak on the device (default: allocated + 90% of free);
    ``row_lengths`` and ``passes_per_row`` choose the CUDA graphs' pad widths (``buckets.length_buckets``)."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda" and config.speedups.enabled
    shape = ModelFacts.read(model, storage=False) if cuda else None
    nf4 = bool(shape and shape.nf4_weights and config.speedups.triton_dequant)
    device_facts = DeviceFacts.probe(device, shape.attention_module, nf4) if shape else DeviceFacts(
        "cuda" if device.type == "cuda" else "cpu")
    plan = plan_speedups(config, precision, device_facts, world_size, ModelFacts.read(model, storage=cuda),
                         row_tokens, memory_budget, row_lengths, passes_per_row)
    return FastPath(plan, apply_plan(model, plan))

