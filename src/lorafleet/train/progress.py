"""What a run reports while it trains: a rich progress bar, `metrics.jsonl`, optional TensorBoard.

Only the main process reports; on other ranks every method is a no-op. `metrics.jsonl` has one JSON
object per logged step (`{"type": "train", "step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s",
"tokens_seen"}`) and per evaluation (`{"type": "eval", "step", "eval_loss"}`). On resume, lines after
the checkpoint's step are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lorafleet.train.checkpoint import TrainState


class RunLogger:
    """Progress and metrics of one run; `enabled=False` on non-main ranks."""

    def __init__(self, metrics_path: Path, enabled: bool, log_every: int = 1, tensorboard_dir: Path | None = None, show_progress: bool = True):
        self.metrics_path = metrics_path
        self.enabled = enabled
        self.log_every = log_every
        self._writer = None
        self._progress: Progress | None = None
        self._task = None
        self._show = show_progress and enabled
        if enabled and tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, step: int) -> None:
        """Drop metrics recorded after `step` (they belong to the part of a run that a resume redoes)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def start(self, total_steps: int, done: int) -> None:
        if not self._show:
            return
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, completed=done, info="")

    def log_step(self, state: TrainState, loss: float, lr: float, grad_norm: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            info = f"loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s"
            self._progress.update(self._task, completed=state.step, info=info)
        if state.step % self.log_every:
            return
        self._append({
            "type": "train", "step": state.step, "epoch": state.epoch, "loss": loss, "lr": lr,
            "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, "tokens_seen": state.tokens_seen,
        })
        if self._writer:
            self._writer.add_scalar("train/loss", loss, state.step)
            self._writer.add_scalar("train/lr", lr, state.step)
            self._writer.add_scalar("train/tokens_per_s", tokens_per_s, state.step)

    def log_eval(self, step: int, eval_loss: float) -> None:
        if not self.enabled:
            return
        self._append({"type": "eval", "step": step, "eval_loss": eval_loss})
        if self._progress is not None:
            self._progress.console.print(f"step {step}: eval loss {eval_loss:.4f}", highlight=False)
        if self._writer:
            self._writer.add_scalar("eval/loss", eval_loss, step)

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    def finish(self, state: TrainState) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=state.step)
            self._progress.stop()
            self._progress = None
        if self._writer:
            self._writer.close()
            self._writer = None

    def _append(self, record: dict) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
