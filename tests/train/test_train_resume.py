"""--resume after an interruption gives the same adapter as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prepared_data import read_metrics, tiny_config
from safetensors.torch import load_file

from lorafleet.train.checkpoint import TrainState
from lorafleet.train.save import OutputError
from lorafleet.train.trainer import train_adapter


class SimulatedCrash(Exception):
    """Fake fault: stands in for the process being killed right after a checkpoint was written."""


def crash_after(step: int):
    def hook(state: TrainState) -> None:
        if state.step == step:
            raise SimulatedCrash(f"killed after step {step}")

    return hook


@pytest.mark.parametrize("save_every", [None, 3], ids=["epoch-checkpoint", "step-checkpoint"])
def test_resume_matches_uninterrupted(tiny_model: Path, tiny_data: Path, tmp_path: Path, save_every: int | None):
    # dropout on, eval + keep-best on: RNG state, best adapter and schedule must all survive the restart
    config = tiny_config(tiny_model, epochs=2, eval_every=2, lora_dropout=0.1, save_every=save_every)
    whole = tmp_path / "whole"
    train_adapter(tiny_data, whole, config, show_progress=False)

    resumed = tmp_path / "resumed"
    crash_step = 3 if save_every else 4  # 4 steps per epoch: a mid-epoch or the epoch-end checkpoint
    with pytest.raises(SimulatedCrash):
        train_adapter(tiny_data, resumed, config, on_step=crash_after(crash_step), show_progress=False)
    assert not resumed.exists()  # an interrupted run never leaves a complete-looking artifact
    assert list((tmp_path / "resumed.partial" / "checkpoints").glob("step-*"))
    with pytest.raises(OutputError, match="pass --resume to continue"):
        train_adapter(tiny_data, resumed, config, show_progress=False)
    # A new memory budget is no other run: it changes how passes are cut, never the weights.
    train_adapter(tiny_data, resumed, config.model_copy(update={"resume": True, "max_memory_gb": 64.0}),
                  show_progress=False)

    a, b = load_file(whole / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    # metrics read as one run: the steps redone after the checkpoint are not duplicated
    assert [r["step"] for r in read_metrics(resumed)] == [r["step"] for r in read_metrics(whole)]
    for x, y in zip(read_metrics(whole), read_metrics(resumed)):
        assert x.get("loss", x.get("eval_loss")) == pytest.approx(y.get("loss", y.get("eval_loss")), rel=1e-5)


def test_resume_refuses_other_settings(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    from lorafleet.train.checkpoint import CheckpointError

    config = tiny_config(tiny_model, epochs=2)
    out = tmp_path / "a"
    with pytest.raises(SimulatedCrash):
        train_adapter(tiny_data, out, config, on_step=crash_after(4), show_progress=False)
    with pytest.raises(CheckpointError, match=r"lr: 0\.01 → 0\.02"):
        train_adapter(tiny_data, out, config.model_copy(update={"resume": True, "lr": 0.02}), show_progress=False)


def test_resume_without_checkpoint(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    with pytest.raises(OutputError, match="no checkpoint found"):
        train_adapter(tiny_data, tmp_path / "none", tiny_config(tiny_model, resume=True), show_progress=False)


def test_resume_after_a_real_sigkill(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    """`lorafleet train` killed with SIGKILL mid-run, then `--resume`, equals an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    config = tiny_config(tiny_model, epochs=25, save_every=2, lora_dropout=0.1)  # 100 steps: time to kill it
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "lorafleet.cli", "train", "--data", str(tiny_data), "--out", str(out), "--config", str(config_file)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed.partial" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()

    subprocess.run(command + ["--resume"], check=True, stdout=subprocess.DEVNULL)
    whole = tmp_path / "whole"
    train_adapter(tiny_data, whole, config, show_progress=False)
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
