"""Paged 8-bit AdamW for QLoRA on CUDA, without a device synchronization after every parameter.

bitsandbytes' ``Optimizer8bit.step`` (0.50) calls ``torch.cuda.synchronize()`` after each parameter's
update kernel. A LoRA adapter has hundreds of small parameters (448 for the Llama-8B shape, all
linear layers), so the step is a chain of launch-wait round trips: the H200 profile showed the step
spanning ~13 ms of GPU time for 8 layers while its kernels ran 0.85 ms (BENCHMARKS.md, round 4).
All updates are queued on one stream in order, so the per-parameter waits change no result; this
subclass runs the same per-parameter updates (the same kernels, order and state) and synchronizes once
at the end, as bitsandbytes does for paged state.
"""

from __future__ import annotations

import torch


def paged_adamw_8bit(params, lr: float, weight_decay: float = 0.0):
    """A ``bitsandbytes.optim.PagedAdamW8bit`` whose ``step`` synchronizes once, not per parameter."""
    import bitsandbytes as bnb

    class PagedAdamW8bitOneSync(bnb.optim.PagedAdamW8bit):
        @torch.no_grad()
        def step(self, closure=None):
            needed = ("check_overrides", "to_gpu", "init_state", "prefetch_state", "update_step")
            if not all(hasattr(self, name) for name in needed):  # another bitsandbytes: its own step
                return super().step(closure)
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            last = None
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    if len(self.state[p]) == 0:
                        self.init_state(group, p, gindex, pindex)
                    self.prefetch_state(p)
                    self.update_step(group, p, gindex, pindex)
                    last = p
            if last is not None and last.device.type == "cuda":
                torch.cuda.synchronize(last.device)  # paged state settles before the host touches it
            return loss

    return PagedAdamW8bitOneSync(params, lr=lr, weight_decay=weight_decay)
