"""Base model resolution, the embedded model's conversion, and fingerprints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lorafleet.cli import app
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
