"""Shared fixtures: the embedded SmolLM2 (converted once per cache), a tiny random Llama with its real
tokenizer, and an isolated LORAFLEET_HOME per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Converted models are reused across runs of the suite; registry and artifacts never are.
os.environ.setdefault("LORAFLEET_CACHE", str(ROOT / ".cache" / "lorafleet"))


@pytest.fixture(autouse=True)
def lorafleet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LORAFLEET_HOME for every test."""
    home = tmp_path / "lorafleet-home"
    monkeypatch.setenv("LORAFLEET_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The embedded SmolLM2-135M-Instruct as a Hugging Face folder."""
    from lorafleet.models import EMBEDDED_DEFAULT, resolve_model

    return resolve_model(EMBEDDED_DEFAULT).path


@pytest.fixture(scope="session")
def tiny_model(embedded_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with SmolLM2's real tokenizer and chat template."""
    from lorafleet.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer_from=embedded_model)
