"""Registry fixtures: real PEFT artifacts on the tiny Llama, and the registry database backends.

`registry_backend` runs a test on SQLite and, when LORAFLEET_TEST_POSTGRES_URL is set (CI sets it via
scripts/start-test-postgres.sh), on a fresh PostgreSQL database too.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry_artifacts import build_artifact

POSTGRES_URL = os.environ.get("LORAFLEET_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def artifact_cache(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Builds each distinct artifact variant once per session; returns the pristine folder (copy it before changing)."""
    built: dict[tuple, Path] = {}

    def get(**options: object) -> Path:
        key = tuple(sorted(options.items()))
        if key not in built:
            built[key] = build_artifact(tmp_path_factory.mktemp("artifact"), tiny_model, **options)  # type: ignore[arg-type]
        return built[key]

    return get


@pytest.fixture
def make_artifact(artifact_cache: Callable[..., Path], tmp_path: Path) -> Callable[..., Path]:
    """A private copy of an artifact variant, safe to tamper with."""
    def make(**options: object) -> Path:
        dest = tmp_path / f"artifact-{uuid.uuid4().hex[:8]}"
        shutil.copytree(artifact_cache(**options), dest)
        return dest

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The registry on SQLite (LORAFLEET_HOME/registry.db) or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        monkeypatch.delenv("LORAFLEET_REGISTRY_URL", raising=False)
        yield "sqlite"
        return
    if not POSTGRES_URL:
        pytest.skip("LORAFLEET_TEST_POSTGRES_URL is unset: start a server with scripts/start-test-postgres.sh (CI does)")
    import psycopg

    database = f"lorafleet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    monkeypatch.setenv("LORAFLEET_REGISTRY_URL", f"{base}/{database}")
    try:
        yield "postgresql"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
