"""What a run reports while it trains: progress on stderr, `metrics.jsonl`, optional TensorBoard.

Progress: a rich bar when stderr is a terminal; otherwise (a batch job, a scheduler, CI writing to a
file) a plain line every `line_every(total)` steps and at least every 30 s, with step / total, loss,
learning rate, tokens/s, elapsed time and ETA, so a log shows the run is alive and how long it has left.

Only the main process reports; on other ranks every method is a no-op. `metrics.jsonl` has one JSON
object per logged step (`{"type": "train", "step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s",
"tokens_seen"}`) and per evaluation (`{"type": "eval", "step", "eval_loss"}`). On resume, lines after
the checkpoint's step are dropped first, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lorafleet.train.checkpoint import TrainState

LINE_INTERVAL_S = 30.0  # a plain progress line at least this often
LINES_PER_RUN = 20  # and about this many lines over a run whose steps are quick


def line_every(total_steps: int) -> int:
    """Steps between plain progress lines: about LINES_PER_RUN lines over the run."""
    return max(1, total_steps // LINES_PER_RUN)


def line_due(step: int, first_step: int, total_steps: int, seconds_since_last: float) -> bool:
    """Is a plain progress line due after `step`? The first step of this process, every
    `line_every(total)` steps, the last step, and whenever LINE_INTERVAL_S have passed."""
    return (step == first_step + 1 or step >= total_steps or step % line_every(total_steps) == 0
            or seconds_since_last >= LINE_INTERVAL_S)


def clock(seconds: float) -> str:
    """H:MM:SS."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(step: int, total_steps: int, loss: float, lr: float, tokens_per_s: float, elapsed_s: float,
                  steps_done: int) -> str:
    """One plain progress line; the ETA assumes the remaining steps take as long as this process's so far."""
    eta = elapsed_s / steps_done * (total_steps - step) if steps_done else 0.0
    return (f"step {step}/{total_steps}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
            f"elapsed {clock(elapsed_s)}  eta {clock(eta)}")


class RunLogger:
    """Progress and metrics of one run; `enabled=False` on non-main ranks."""

    def __init__(self, metrics_path: Path, enabled: bool, log_every: int = 1, tensorboard_dir: Path | None = None,
                 show_progress: bool = True):
        self.metrics_path = metrics_path
        self.enabled = enabled
        self.log_every = log_every
        self._writer = None
        self._progress: Progress | None = None
        self._task = None
        self._show = show_progress and enabled
        self._console = Console(stderr=True)
        self._total = 0
        self._first_step = 0
        self._started = 0.0
        self._last_line = 0.0
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
        self._total, self._first_step = total_steps, done
        self._started = self._last_line = time.monotonic()
        if not self._show:
            return
        if not self._console.is_terminal:
            self._console.print(f"training: {total_steps - done} steps to go of {total_steps}", highlight=False)
            return
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_steps, completed=done, info="")

    def log_step(self, state: TrainState, loss: float, lr: float, grad_norm: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            info = f"loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s"
            self._progress.update(self._task, completed=state.step, info=info)
        elif self._show:
            now = time.monotonic()
            if line_due(state.step, self._first_step, self._total, now - self._last_line):
                line = progress_line(state.step, self._total, loss, lr, tokens_per_s, now - self._started,
                                     state.step - self._first_step)
                self._console.print(line, highlight=False, soft_wrap=True)
                self._last_line = now
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
        if self._show:
            self._console.print(f"step {step}: eval loss {eval_loss:.4f}", highlight=False)
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
