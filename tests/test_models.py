"""Base model resolution, the embedded model's conversion, and fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafleet.cli import app
from lorafleet.fingerprints import FingerprintCache, base_fingerprints
from lorafleet.models import (
    EMBEDDED_DEFAULT,
    ModelError,
    build_tiny_llama,
    load_tokenizer,
    model_fingerprint,
    read_safetensors_header,
    resolve_model,
    tokenizer_fingerprint,
)


def test_embedded_model_is_a_complete_hf_folder(embedded_model: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(embedded_model)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == ("llama", 30, 576, 49152)
    assert not hasattr(config, "quantization_config")
    tokenizer = load_tokenizer(embedded_model)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "<|im_start|>user\nhi<|im_end|>" in text
    assert tokenizer.eos_token == "<|im_end|>"


def test_unknown_model_names_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="embedded default 'smollm2-135m-instruct' or a local Hugging Face model folder"):
        resolve_model("meta-llama/Llama-3.1-8B")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="no \\*.safetensors weights"):
        resolve_model(str(tmp_path))


def test_cli_rejects_unknown_model() -> None:
    result = CliRunner().invoke(app, ["model", "info", "--model", "gpt-5"])
    assert result.exit_code == 2
    assert "unknown model 'gpt-5'" in result.output


def test_local_folder_resolves_and_fingerprints_differ(tiny_model: Path, embedded_model: Path) -> None:
    ref = resolve_model(str(tiny_model))
    assert ref.path == tiny_model.resolve() and not ref.is_embedded
    # Same tokenizer, different weights: tokenizer fingerprints agree, model fingerprints do not.
    assert tokenizer_fingerprint(tiny_model) == tokenizer_fingerprint(embedded_model)
    assert model_fingerprint(tiny_model) != model_fingerprint(embedded_model)


def test_fingerprint_survives_tokenizer_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    load_tokenizer(tiny_model).save_pretrained(tmp_path)
    assert tokenizer_fingerprint(tmp_path) == tokenizer_fingerprint(tiny_model)


def test_fingerprint_changes_with_chat_template_and_shapes(tiny_model: Path, embedded_model: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    tokenizer.save_pretrained(tmp_path / "tok")
    assert tokenizer_fingerprint(tmp_path / "tok") != tokenizer_fingerprint(tiny_model)
    other = build_tiny_llama(tmp_path / "other-seed", tokenizer_from=embedded_model, seed=1)
    # Same config, names, shapes and dtypes, other weight values: the fingerprint covers the values.
    assert model_fingerprint(other) != model_fingerprint(tiny_model)
    config = json.loads((other / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (other / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(other) != model_fingerprint(tiny_model)


def test_safetensors_header_rejects_garbage(tmp_path: Path, tiny_model: Path) -> None:
    header = read_safetensors_header(tiny_model / "model.safetensors")
    assert header["model.embed_tokens.weight"] == ("F32", [49152, 64])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="header length"):
        read_safetensors_header(bad)


def _fresh_copy(model: Path, dest: Path) -> Path:
    """A copy of a model folder with its own inodes (copytree), so cache entries of the original do not apply."""
    return Path(shutil.copytree(model, dest))


def test_fingerprint_cache_is_keyed_by_inode_size_mtime_and_ctime(tiny_model: Path, tmp_path: Path) -> None:
    model = _fresh_copy(tiny_model, tmp_path / "model")
    cache = FingerprintCache(tmp_path / "fingerprints", settle_s=0)
    first = base_fingerprints(model, cache=cache)
    assert first.model == model_fingerprint(tiny_model)  # the copy has the same bytes, so the same fingerprint
    [entry] = list(cache.root.iterdir())
    entry.write_text(json.dumps({**first.__dict__, "model": "f" * 64}))  # prove that a matching key is served from the cache
    assert base_fingerprints(model, cache=cache).model == "f" * 64

    weights = model / "model.safetensors"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight: same size
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # the owner can put the mtime back, not the ctime
    assert weights.stat().st_size == before.st_size and weights.stat().st_mtime_ns == before.st_mtime_ns
    edited = base_fingerprints(model, cache=cache)
    assert edited.model not in {"f" * 64, first.model}
    assert (edited.tokenizer, edited.legacy_model) == (first.tokenizer, first.legacy_model)  # values only: scheme 1 is blind


def test_no_cache_entry_while_inputs_are_fresh_or_changing(tiny_model: Path, tmp_path: Path) -> None:
    model = _fresh_copy(tiny_model, tmp_path / "model")
    fresh = FingerprintCache(tmp_path / "fresh", settle_s=3600)
    base_fingerprints(model, cache=fresh)
    assert not fresh.root.exists() or not list(fresh.root.iterdir())

    cache = FingerprintCache(tmp_path / "changing", settle_s=0)

    def write_during_hashing(done: int, total: int) -> None:
        if done < total:
            with (model / "model.safetensors").open("r+b") as f:
                f.seek(-1, os.SEEK_END)
                f.write(b"\x01")

    with pytest.raises(ModelError, match="model.safetensors changed while it was being fingerprinted"):
        base_fingerprints(model, on_progress=write_during_hashing, cache=cache)
    assert not cache.root.exists() or not list(cache.root.iterdir())


def test_scheme_1_is_what_earlier_lorafleet_computed(tiny_model: Path) -> None:
    """Scheme 1 written out independently: config (minus provenance), name → [dtype, shape], tokenizer fingerprint."""
    config = json.loads((tiny_model / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in {"_name_or_path", "transformers_version"}}
    tensors = read_safetensors_header(tiny_model / "model.safetensors")
    digest = hashlib.sha256()
    for part in (config, {k: list(v) for k, v in tensors.items()}):
        digest.update(json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    digest.update(tokenizer_fingerprint(tiny_model).encode())
    assert base_fingerprints(tiny_model).legacy_model == digest.hexdigest()


def test_a_malformed_base_file_is_a_model_error_naming_it(tiny_model: Path, tmp_path: Path) -> None:
    model = _fresh_copy(tiny_model, tmp_path / "model")
    (model / "config.json").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ModelError, match="config.json: nested deeper than 64 levels"):
        model_fingerprint(model)


def test_model_info_prints_the_fingerprints(tiny_model: Path) -> None:
    result = CliRunner().invoke(app, ["model", "info", "--model", str(tiny_model), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    fingerprints = base_fingerprints(tiny_model)
    assert (info["model_fingerprint"], info["fingerprint_scheme"]) == (fingerprints.model, 2)
    assert (info["tokenizer_fingerprint"], info["legacy_model_fingerprint"]) == (fingerprints.tokenizer, fingerprints.legacy_model)
    human = CliRunner().invoke(app, ["model", "info", "--model", str(tiny_model)])
    assert f"model_fingerprint: {fingerprints.model}" in human.stdout


@pytest.mark.integration
def test_two_processes_convert_once(tmp_path: Path) -> None:
    """Two concurrent first uses share one conversion (file lock) and leave no partial folder behind."""
    code = "from lorafleet.models import resolve_model; print(resolve_model().path)"
    env = {**__import__("os").environ, "LORAFLEET_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].strip().splitlines()[-1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]
    models = tmp_path / "models"
    assert [p.name for p in models.iterdir() if p.is_dir()] == [Path(outputs[0]).name]
    assert not list(models.glob(".*partial*"))
    assert EMBEDDED_DEFAULT in outputs[0]
