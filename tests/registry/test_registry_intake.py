"""What is stored is what was checked: files swapped or rewritten during a push, links, nesting, size caps.

The swaps happen at exact points through the push's `on_phase` hook and intake's `before_open`
hook, never by timing.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from lorafleet.artifact import sha256_file
from lorafleet.registry import intake, service, store
from lorafleet.registry.errors import ArtifactRejected
from lorafleet.registry.push import PushEvent, init_base, push
from registry_artifacts import reseal

WEIGHTS = "adapter_model.safetensors"


def _swap_for_symlink(source: Path, target: Path) -> None:
    (source / WEIGHTS).unlink()
    (source / WEIGHTS).symlink_to(target)


def _rewrite_in_place(source: Path, other: Path) -> None:
    """Same size, other bytes, mtime put back: what a careful attacker would do."""
    path = source / WEIGHTS
    before = path.stat()
    path.write_bytes(other.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


SWAPS = {"symlink": _swap_for_symlink, "rewrite": _rewrite_in_place}


@pytest.mark.parametrize("phase", ["staged", "checked"])
@pytest.mark.parametrize("swap", SWAPS, ids=list(SWAPS))
def test_a_file_swapped_during_the_push_never_reaches_the_store(
    phase: str, swap: str, make_artifact: Callable[..., Path], tiny_model: Path
) -> None:
    init_base(str(tiny_model))
    artifact, other = make_artifact(seed=0), make_artifact(seed=1)  # same shapes, other values
    checked = (artifact / WEIGHTS).read_bytes()
    assert (other / WEIGHTS).read_bytes() != checked and (other / WEIGHTS).stat().st_size == len(checked)
    events: list[str] = []

    def attack(event: PushEvent) -> None:
        events.append(event.phase)
        if event.phase == phase:
            SWAPS[swap](event.source, other / WEIGHTS)

    result = push(artifact, "support", on_phase=attack)

    assert events == ["staged", "checked"]
    assert (artifact / WEIGHTS).read_bytes() != checked  # the source really was changed under the push
    stored = result.content_path / WEIGHTS
    assert not stored.is_symlink() and stat.S_ISREG(stored.lstat().st_mode)
    assert stored.read_bytes() == checked
    assert sha256_file(stored) == json.loads(result.version.manifest)["files"][WEIGHTS]


def test_a_symlink_swapped_in_just_before_a_file_is_opened_is_refused(make_artifact: Callable[..., Path], tmp_path: Path) -> None:
    artifact, other = make_artifact(seed=0), make_artifact(seed=1)

    def swap(rel: str) -> None:
        if rel == WEIGHTS:
            _swap_for_symlink(artifact, other / WEIGHTS)

    staged = intake.stage(artifact, tmp_path / "staged", before_open=swap)
    assert staged.problems == [f"{WEIGHTS}: is a symlink; an artifact holds only regular files (copy the target in)"]
    assert WEIGHTS not in staged.files and not (tmp_path / "staged" / WEIGHTS).exists()
    assert "adapter_config.json" in staged.files  # the rest was staged, so every other problem is reported too


def test_staged_files_are_read_only_copies_with_their_checksums(make_artifact: Callable[..., Path], tmp_path: Path) -> None:
    artifact = make_artifact()
    staged = intake.stage(artifact, tmp_path / "staged")
    assert staged.problems == []
    assert sorted(staged.files) == sorted(p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file())
    for rel, copy in staged.files.items():
        path = staged.root / rel
        assert copy.sha256 == sha256_file(artifact / rel) == sha256_file(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o444 and path.stat().st_ino != (artifact / rel).stat().st_ino
    assert stat.S_IMODE(staged.root.stat().st_mode) == 0o700


def test_limits_on_files_depth_and_size(make_artifact: Callable[..., Path], tmp_path: Path) -> None:
    artifact = make_artifact()
    deep = artifact / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "note.txt").write_text("x")
    limits = intake.IntakeLimits(max_depth=2, max_files=6, max_file_bytes=10_000_000)
    staged = intake.stage(artifact, tmp_path / "staged", limits)
    text = " | ".join(staged.problems)
    assert "a/b/c: folders nested deeper than 2 levels" in text
    assert text.count("more than 6 files") == 1
    small = intake.stage(artifact, tmp_path / "small", intake.IntakeLimits(max_file_bytes=1000))
    assert any(p.startswith(f"{WEIGHTS}: ") and "more than the 1,000 one file may have" in p for p in small.problems)


def test_a_fifo_is_refused_without_blocking(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    artifact = make_artifact()
    os.mkfifo(artifact / "pipe")
    with pytest.raises(ArtifactRejected, match="pipe: is not a regular file"):
        push(artifact, "support")


def test_a_symlink_and_an_auto_map_nested_in_subfolders_are_refused(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    artifact = make_artifact()
    nested = artifact / "extra" / "deeper"
    nested.mkdir(parents=True)
    (nested / "config.json").write_text(json.dumps({"layers": [{"x": {"auto_map": {"AutoModel": "evil.Model"}}}]}))
    reseal(artifact)
    (nested / "weights.safetensors").symlink_to(artifact / WEIGHTS)
    (artifact / "extra" / "outside").symlink_to("/etc", target_is_directory=True)
    with pytest.raises(ArtifactRejected) as refused:
        push(artifact, "support")
    problems = refused.value.problems
    assert "extra/deeper/config.json: has an 'auto_map' entry: it points loaders at custom code; remove it" in problems
    assert any(p.startswith("extra/deeper/weights.safetensors: is a symlink") for p in problems)
    assert any(p.startswith("extra/outside: is a symlink") for p in problems)
    assert service.list_adapters() == []


@pytest.mark.parametrize("rel", ["adapter_config.json", "extra/deep.json", "metrics.jsonl"])
def test_a_json_file_nested_10000_deep_is_refused(rel: str, make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    artifact = make_artifact()
    (artifact / rel).parent.mkdir(exist_ok=True)
    (artifact / rel).write_text("[" * 10_000 + "]" * 10_000 + "\n")
    reseal(artifact)
    with pytest.raises(ArtifactRejected) as refused:
        push(artifact, "support")
    line = " line 1" if rel.endswith(".jsonl") else ""
    assert f"{rel}{line}: nested deeper than 64 levels" in refused.value.problems


def test_a_200_mb_json_file_is_refused_without_being_copied(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    artifact = make_artifact()
    size = 200 * 2**20
    with (artifact / "big.json").open("w") as f:  # valid JSON: an object padded with whitespace
        f.write('{"pad": 0')
        for _ in range(size // 2**20 - 1):
            f.write(" " * 2**20)
        f.write(" " * (2**20 - 10) + "}")
    assert (artifact / "big.json").stat().st_size == size
    staged_sizes: list[int] = []
    with pytest.raises(ArtifactRejected) as refused:
        push(artifact, "support", on_phase=lambda e: staged_sizes.append(sum(f.size for f in e.staged.files.values())))
    assert f"big.json: {size:,} bytes, more than the {64 * 2**20:,} a JSON file may have" in refused.value.problems
    assert staged_sizes and staged_sizes[0] < 10 * 2**20  # the big file was never copied
    assert not list(store.staging_dir().iterdir())  # and the staging folder is gone
