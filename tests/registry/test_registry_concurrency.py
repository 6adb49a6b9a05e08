"""Several processes pushing at once, and a push killed between the copy and the commit (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lorafleet.registry import service, store
from lorafleet.registry.push import PAUSE_AFTER_COPY_ENV, init_base, push

pytestmark = pytest.mark.usefixtures("registry_backend")
LORAFLEET = str(Path(sys.executable).with_name("lorafleet"))


def _push_process(artifact: Path, name: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [LORAFLEET, "adapters", "push", str(artifact), "--name", name, "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )


def test_concurrent_pushes_from_several_processes_get_distinct_versions(
    make_artifact: Callable[..., Path], tiny_model: Path
) -> None:
    init_base(str(tiny_model))
    artifacts = [make_artifact(seed=0), make_artifact(seed=1)]
    processes = [_push_process(artifacts[i % 2], "support") for i in range(6)]
    refs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        refs.append(json.loads(out)["ref"])
    assert sorted(refs) == [f"support@v{n}" for n in range(1, 7)]
    listed = service.list_adapters()
    assert [row.version for row in listed] == [1, 2, 3, 4, 5, 6]
    assert len({row.content_sha256 for row in listed}) == 2
    assert len([p for p in store.store_dir().iterdir() if not p.name.startswith(".")]) == 2


def _kill_after_copy(artifact: Path) -> None:
    """Start a push that pauses after its copy (test hook), wait for it to get there, SIGKILL it."""
    process = _push_process(artifact, "support", **{PAUSE_AFTER_COPY_ENV: "120"})
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "test hook: copied into the store" in line, line + process.stderr.read()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL


def test_a_push_killed_between_copy_and_commit_leaves_an_orphan_the_next_push_reuses(
    make_artifact: Callable[..., Path], tiny_model: Path
) -> None:
    init_base(str(tiny_model))
    artifact = make_artifact()
    _kill_after_copy(artifact)
    assert service.list_adapters() == []  # no row without a commit
    orphans = [p for p in store.store_dir().iterdir() if not p.name.startswith(".")]
    assert len(orphans) == 1

    result = push(artifact, "support")
    assert result.ref == "support@v1"  # the killed push used no version number
    assert result.content_reused and result.content_path == orphans[0]
    assert service.gc().removed == []  # now referenced
    assert (result.content_path / "adapter_model.safetensors").read_bytes() == (artifact / "adapter_model.safetensors").read_bytes()


def test_gc_removes_the_orphan_of_a_killed_push(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    kept = push(make_artifact(seed=0), "support")
    _kill_after_copy(make_artifact(seed=1))
    report = service.gc()
    assert len(report.removed) == 1 and report.kept == 1
    assert [p.name for p in store.store_dir().iterdir() if not p.name.startswith(".")] == [kept.version.content_sha256]
    assert push(make_artifact(seed=1), "support").ref == "support@v2"  # the same content pushes cleanly afterwards
