"""The QLoRA optimizer: bitsandbytes' 8-bit AdamW without a GPU sync after every parameter.

bitsandbytes 0.50's ``Optimizer8bit.step`` calls ``torch.cuda.synchronize()`` after each parameter's
update, paged or not. The H200 profile (BENCHMARKS.md, round 4) measured the step of 112 LoRA tensors
spanning 10-14 ms while its kernels ran 0.85 ms: the GPU waits for the host between every two
parameters (448 of them for an 8B model's r=32 all-linear adapter). The sync exists for paged state,
which lives in unified memory and is prefetched asynchronously. An adapter's state is small (about
170 MB for that adapter in 8 bits), so lorafleet keeps it in device memory, where every update is an
ordinary kernel on the current stream and needs no sync: the same kernels, in the same order, on
the same values as ``PagedAdamW8bit`` (``paged_optimizer: true`` in the config keeps that one).
"""

from __future__ import annotations

import bitsandbytes as bnb
import torch


class AdamW8bit(bnb.optim.AdamW8bit):
    """``bnb.optim.AdamW8bit`` (never paged) whose ``step`` leaves the stream to order the updates."""

    def __init__(self, params, **kwargs):
        kwargs.pop("is_paged", None)
        super().__init__(params, is_paged=False, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.initialized:  # what the base step does on its first call
            self.check_overrides()
            self.to_gpu()
            self.initialized = True
        for gindex, group in enumerate(self.param_groups):
            for pindex, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if len(self.state[p]) == 0:
                    self.init_state(group, p, gindex, pindex)
                self.update_step(group, p, gindex, pindex)
        return loss
