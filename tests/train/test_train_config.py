"""TrainConfig: every shipped YAML loads; the file overrides defaults and flags override the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.config import ConfigError, TrainConfig, load_train_config

# Every shipped YAML is a train config except the fleet's, which tests/serve/test_serve_config.py loads.
FLEET_CONFIGS = {"fleet.yaml"}
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "configs").glob("*.yaml") if p.name not in FLEET_CONFIGS)


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"lora-cpu.yaml", "qlora-cuda.yaml", "demo.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path):
    config = load_train_config(path)
    assert isinstance(config, TrainConfig)
    assert config != TrainConfig()  # the file actually set something


def test_qlora_config_is_qlora():
    config = load_train_config(next(p for p in CONFIGS if p.name == "qlora-cuda.yaml"))
    assert config.quantization == "nf4" and config.precision == "bf16" and config.gradient_checkpointing


def test_seed_defaults():
    c = TrainConfig()
    assert (c.lr, c.lora_r, c.lora_alpha, c.lora_dropout, c.max_grad_norm) == (2e-4, 32, 64, 0.05, 0.3)
    assert c.rslora and c.target_modules == "all-linear" and c.precision == "auto" and c.quantization == "none"


def test_every_field_is_described():
    assert all(field.description for field in TrainConfig.model_fields.values())


def test_flags_override_file(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("lora-r: 8\nlr: 1.0e-3\n")
    config = load_train_config(path, {"lr": 5e-4, "epochs": None})
    assert config.lora_r == 8 and config.lr == 5e-4 and config.epochs == 1


def test_unknown_key_is_an_error_naming_it(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("lora_rank: 8\n")
    with pytest.raises(ConfigError, match="lora_rank"):
        load_train_config(path)


def test_bad_value_names_the_file_and_field(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("precision: fp8\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*precision"):
        load_train_config(path)
