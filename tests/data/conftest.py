"""Fixtures for the prepare tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def opts(tiny_model: Path):
    """PrepareOptions for the tiny model (a local folder) with an error threshold that never trips."""
    from lorafleet.data.prepare import PrepareOptions

    def make(**overrides) -> PrepareOptions:
        return PrepareOptions(**{"model": str(tiny_model), "max_error_rate": 1.0, **overrides})

    return make
