"""The same `lorafleet train` command under torchrun with 2 CPU processes (gloo) matches one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prepared_data import read_metrics
from safetensors.torch import load_file

from lorafleet.config import load_train_config
from lorafleet.artifact import load_manifest, verify_artifact
from lorafleet.train.trainer import train_adapter

BIN = Path(sys.executable).parent


def test_two_processes_match_one(tiny_model: Path, tiny_data: Path, tmp_path: Path):
    # Same global batch (4 = 4×1 process = 2×2 processes); dropout off since each process draws its own masks.
    config_file = tmp_path / "train.yaml"
    config_file.write_text(
        f"model: {tiny_model}\nlr: 1.0e-2\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 0.0\nepochs: 2\n"
        "eval_every: 2\nseed: 0\ngradient_checkpointing: false\n"
    )
    single = tmp_path / "single"
    train_adapter(tiny_data, single, load_train_config(config_file, {"batch_size": 4}), show_progress=False)

    ddp = tmp_path / "ddp"
    command = [
        str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", str(BIN / "lorafleet"), "train",
        "--data", str(tiny_data), "--out", str(ddp), "--config", str(config_file), "--batch-size", "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert verify_artifact(ddp) == []
    plans = load_manifest(single).speedup_plan, load_manifest(ddp).speedup_plan
    assert [(p["world_size"], p["global_batch"]) for p in plans] == [(1, 4), (2, 4)]  # the manifest records both

    one, two = read_metrics(single), read_metrics(ddp)
    assert [(r["type"], r["step"]) for r in one] == [(r["type"], r["step"]) for r in two]
    assert [r["tokens_seen"] for r in one if r["type"] == "train"] == [r["tokens_seen"] for r in two if r["type"] == "train"]
    for a, b in zip(one, two):
        key = "loss" if a["type"] == "train" else "eval_loss"
        assert b[key] == pytest.approx(a[key], rel=1e-4), (a, b)  # stated tolerance: 1e-4 relative
    wa, wb = load_file(single / "adapter_model.safetensors"), load_file(ddp / "adapter_model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-3, atol=1e-5, msg=name)
