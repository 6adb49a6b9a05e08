"""FleetConfig: the shipped configs/fleet.yaml loads, flags override the file, mistakes name their field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.serve.config import FleetConfig, FleetConfigError, load_fleet_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_fleet_config_loads() -> None:
    config = load_fleet_config(ROOT / "configs" / "fleet.yaml")
    assert config.replicas == 2 and config.kv_cache_gib == 1 and config.port == 8080
    assert config.engines == [] and config.log_prompts is False


def test_flags_override_the_file_and_unset_flags_do_not(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("replicas: 2\nport: 9000\n")
    config = load_fleet_config(path, {"port": 9100, "replicas": None,
                                      "engines": [{"url": "http://10.0.0.5:8000/", "api_key": "k"}]})
    assert (config.port, config.replicas) == (9100, 2)
    assert config.engines[0].url == "http://10.0.0.5:8000"  # trailing slash dropped


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("replica: 2\n", "replica: Extra inputs are not permitted"),
        ("replicas: 0\n", "replicas: Input should be greater than or equal to 1"),
        ("engines: [{url: 'ftp://x'}]\n", "must start with http"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("port: [\n", "cannot read fleet config"),
    ],
)
def test_mistakes_name_the_field(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(FleetConfigError, match=says.replace("[", r"\[")):
        load_fleet_config(path)


def test_every_field_is_described() -> None:
    assert all(field.description for field in FleetConfig.model_fields.values())
