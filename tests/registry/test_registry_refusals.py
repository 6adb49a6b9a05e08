"""Push refusals for what the checks now cover: safetensors layouts, adapter_config fields, weight-value
fingerprints, the fingerprint cache, artifacts and registries from before scheme 2, and restamp."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from lorafleet.artifact import load_manifest
from lorafleet.fingerprints import base_fingerprints
from lorafleet.models import build_tiny_llama, model_fingerprint, read_safetensors_header
from lorafleet.registry import db, service
from lorafleet.registry.errors import ArtifactRejected, BaseModelMismatch
from lorafleet.registry.push import init_base, push, registry_base
from lorafleet.registry.restamp import restamp
from registry_artifacts import build_artifact, edit_config, reseal

WEIGHTS = "adapter_model.safetensors"


def _edit_header(mutate: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the adapter's safetensors header (data bytes untouched), then reseal the manifest."""
    def tamper(folder: Path) -> None:
        path = folder / WEIGHTS
        data = path.read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + length])
        mutate(header)
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
        reseal(folder)
    return tamper


def _tensors(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _overlap(header: dict) -> None:
    first, second = _tensors(header)[:2]  # both lora_A of q_proj/v_proj: same shape, same size
    header[second]["data_offsets"] = list(header[first]["data_offsets"])


def _past_the_end(header: dict) -> None:
    last = _tensors(header)[-1]
    header[last]["data_offsets"] = [o + 64 for o in header[last]["data_offsets"]]


def _dtype(header: dict) -> None:
    header[_tensors(header)[0]]["dtype"] = "I32"  # same size as F32, so only the dtype is wrong


REFUSALS: dict[str, tuple[Callable[[Path], None], str]] = {
    "overlapping offsets": (_edit_header(_overlap), "overlap"),
    "offsets outside the file": (_edit_header(_past_the_end), "outside the file"),
    "unsupported dtype": (_edit_header(_dtype), "dtype I32 is not allowed here (allowed: BF16, F16, F32)"),
    "use_rslora disagrees": (edit_config(use_rslora=True), "adapter_config.json: use_rslora is True, the manifest says False"),
    "alpha_pattern disagrees": (edit_config(alpha_pattern={"q_proj": 64}), "alpha_pattern is {'q_proj': 64.0}, the manifest says {}"),
    "layers_to_transform disagrees": (edit_config(layers_to_transform=[0]), "layers_to_transform is [0], the manifest says None"),
    "PiSSA init": (edit_config(init_lora_weights="pissa"), "changes the base weights"),
    "duplicate key": (lambda f: (f / "extra.json").write_text('{"r": 8, "r": 512}') or reseal(f), "extra.json: the key 'r' appears twice"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_push_refuses(case: str, make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    tamper, expected = REFUSALS[case]
    init_base(str(tiny_model))
    artifact = make_artifact()
    tamper(artifact)
    with pytest.raises(ArtifactRejected) as refused:
        push(artifact, "support")
    assert any(expected in p for p in refused.value.problems), refused.value.problems
    assert service.list_adapters() == []


def test_an_adapter_for_a_base_whose_weights_differ_only_in_values_is_refused(
    tiny_model: Path, embedded_model: Path, tmp_path: Path
) -> None:
    other = build_tiny_llama(tmp_path / "other-base", tokenizer_from=embedded_model, seed=1)
    assert read_safetensors_header(other / "model.safetensors") == read_safetensors_header(tiny_model / "model.safetensors")
    artifact = build_artifact(tmp_path / "artifact", other)
    init_base(str(tiny_model))
    with pytest.raises(ArtifactRejected) as refused:
        push(artifact, "support")
    message = str(refused.value)
    assert model_fingerprint(other) in message and model_fingerprint(tiny_model) in message
    assert "trained on other weights" in message


def test_a_rejected_push_does_not_vouch_for_a_later_same_size_tokenizer_edit(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    artifact = make_artifact()
    with (artifact / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4}\n')  # a bad checksum: this push is refused after the tokenizer was fingerprinted
    with pytest.raises(ArtifactRejected, match="metrics.jsonl: sha256 is"):
        push(artifact, "support")
    template = artifact / "chat_template.jinja"
    before = template.stat()
    edited = template.read_text().replace("<|im_start|>", "<|im_starT|>", 1)
    assert len(edited) == before.st_size and edited != template.read_text()
    template.write_text(edited)
    os.utime(template, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime
    reseal(artifact)
    with pytest.raises(ArtifactRejected, match="the tokenizer in the artifact"):
        push(artifact, "support")


def test_stored_content_is_sealed_read_only(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    stored = push(make_artifact(), "support").content_path
    assert stat.S_IMODE(stored.stat().st_mode) == 0o555
    for path in stored.rglob("*"):
        assert not path.is_symlink()
        assert stat.S_IMODE(path.stat().st_mode) == (0o555 if path.is_dir() else 0o444)


def test_a_format_1_artifact_gets_the_way_forward_and_restamp_moves_it(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    artifact = make_artifact()
    reseal(artifact, format_version=1, base_fingerprint=base_fingerprints(tiny_model).legacy_model)
    with pytest.raises(ArtifactRejected) as refused:
        push(artifact, "support")
    message = str(refused.value)
    assert "format_version 1" in message and "not its weight values" in message and "lorafleet adapters restamp" in message

    old, new = restamp(artifact)
    assert (old.format_version, new.format_version) == (1, 2) and new.restamped_at is not None
    assert load_manifest(artifact) == new and new.base_fingerprint == model_fingerprint(tiny_model)
    assert push(artifact, "support").ref == "support@v1"
    with pytest.raises(ArtifactRejected, match="already format_version 2"):
        restamp(artifact)


def test_restamp_refuses_another_architecture_and_anything_push_refuses(make_artifact: Callable[..., Path], tiny_model: Path) -> None:
    init_base(str(tiny_model))
    legacy = base_fingerprints(tiny_model).legacy_model
    foreign = make_artifact()
    reseal(foreign, format_version=1, base_fingerprint="0" * 64)
    before = (foreign / "lorafleet.json").read_bytes()
    with pytest.raises(ArtifactRejected, match="even under the earlier fingerprint scheme"):
        restamp(foreign)
    with pytest.raises(ArtifactRejected, match="even under the earlier fingerprint scheme"):
        push(foreign, "support")
    dora = make_artifact(use_dora=True)
    reseal(dora, format_version=1, base_fingerprint=legacy)
    with pytest.raises(ArtifactRejected, match="vLLM cannot serve DoRA"):
        restamp(dora)
    assert (foreign / "lorafleet.json").read_bytes() == before and load_manifest(dora).format_version == 1


def test_a_registry_pinned_by_an_earlier_lorafleet_moves_to_the_current_fingerprint(
    make_artifact: Callable[..., Path], tiny_model: Path
) -> None:
    fingerprints = base_fingerprints(tiny_model)
    init_base(str(tiny_model))
    db.run_transaction(db.connect(), lambda conn: db.update_base_fingerprint(conn, fingerprints.legacy_model))
    assert push(make_artifact(), "support").ref == "support@v1"
    assert registry_base().record.model_fingerprint == fingerprints.model
    db.run_transaction(db.connect(), lambda conn: db.update_base_fingerprint(conn, fingerprints.legacy_model))
    assert init_base(str(tiny_model)).model_fingerprint == fingerprints.model


def test_a_base_whose_files_changed_since_the_pin_is_refused(make_artifact: Callable[..., Path], tiny_model: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    init_base(str(base))
    assert push(make_artifact(seed=0), "support").ref == "support@v1"  # same bytes as tiny_model: same fingerprint
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BaseModelMismatch, match="its files changed"):
        push(make_artifact(seed=1), "support")
