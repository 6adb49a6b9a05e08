"""Fixtures for train tests (helpers live in prepared_data.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prepared_data import conversations, write_prepared


@pytest.fixture(scope="session")
def tiny_data(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train + 4 eval arithmetic chats prepared for the tiny model."""
    chats = conversations(20)
    return write_prepared(tmp_path_factory.mktemp("tiny-data"), tiny_model, chats[:16], chats[16:])
