"""Push checks: each function inspects one aspect of an artifact and returns the problems it found.

An empty list means the aspect is fine. Problems are sentences that name the file or field and say
what is wrong; push collects all of them so one attempt shows everything that needs fixing.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path

from lorafleet.models import ModelError, read_safetensors_header, tokenizer_fingerprint
from lorafleet.artifact import MANIFEST_NAME, Manifest, verify_artifact

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)
# Pickle-based weight formats execute code when loaded.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
# The values vLLM accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks). vLLM loads an adapter
# whose rank is at most the server's --max-lora-rank, so any rank up to the largest value is servable.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The decoder's linear projections, which vLLM's LoRA layers wrap for Llama/Qwen/Mistral families.
SERVABLE_TARGET_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIX = re.compile(r"\.lora_(?P<side>[AB])\.weight$")


def name_problems(name: str, what: str = "name") -> list[str]:
    """Problems with an adapter or alias name; empty when it matches `[a-z0-9][a-z0-9._-]{0,62}`.

    Names end up in paths, URLs and model fields, so anything path-like (`..`, `/`), any control
    character and any non-ASCII look-alike letter is refused with the offending character named.
    """
    problems: list[str] = []
    for i, ch in enumerate(name):
        if ord(ch) < 32 or ord(ch) == 127:
            problems.append(f"{what} {name!r} contains the control character {ch!r} at position {i}")
        elif not ch.isascii():
            label = unicodedata.name(ch, "unnamed character")
            problems.append(f"{what} {name!r} contains the non-ASCII character {ch!r} ({label}) at position {i}")
    if "/" in name or "\\" in name:
        problems.append(f"{what} {name!r} contains a path separator")
    if ".." in name:
        problems.append(f"{what} {name!r} contains '..'")
    if not problems and not NAME_PATTERN.fullmatch(name):
        problems.append(
            f"{what} {name!r} does not match [a-z0-9][a-z0-9._-]{{0,62}}: lowercase letters, digits, '.', '_', '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    return problems


def file_problems(folder: Path) -> list[str]:
    """Symlinks, non-regular files, pickle weights and Python files anywhere in the artifact."""
    problems: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for entry in sorted(dirs + files):
            path = Path(root) / entry
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                problems.append(f"{rel}: is a symlink; an artifact holds only regular files (copy the target in)")
            elif entry in files and not path.is_file():
                problems.append(f"{rel}: is not a regular file")
            elif path.suffix.lower() in PICKLE_SUFFIXES:
                problems.append(f"{rel}: pickle-format file; only safetensors weights are accepted (re-save with safe_serialization=True)")
            elif path.suffix.lower() == ".py":
                problems.append(f"{rel}: Python file; an artifact must not carry code (it would run with trust_remote_code)")
    return problems


def auto_map_problems(folder: Path) -> list[str]:
    """Any `auto_map` key, at any depth, in any JSON file: it points loaders at custom code."""
    problems: list[str] = []
    for path in sorted(folder.rglob("*.json")):
        if path.is_symlink() or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{path.relative_to(folder).as_posix()}: not valid JSON ({exc})")
            continue
        if _has_key(data, "auto_map"):
            problems.append(f"{path.relative_to(folder).as_posix()}: has an 'auto_map' entry (custom code); remove it")
    return problems


def checksum_problems(folder: Path) -> list[str]:
    """The manifest's file list and checksums against the files (train.artifact.verify_artifact)."""
    return verify_artifact(folder)


def servable_problems(adapter_config: dict) -> list[str]:
    """What vLLM would refuse when loading this adapter, said now instead of at request time."""
    problems: list[str] = []
    if adapter_config.get("use_dora"):
        problems.append("adapter_config.json: use_dora is true; vLLM cannot serve DoRA adapters (retrain without DoRA)")
    r = adapter_config.get("r")
    if not isinstance(r, int) or not 1 <= r <= max(VLLM_MAX_LORA_RANKS):
        problems.append(
            f"adapter_config.json: rank r={r!r} cannot be served; vLLM serves ranks 1..{max(VLLM_MAX_LORA_RANKS)} "
            f"(--max-lora-rank choices {list(VLLM_MAX_LORA_RANKS)})"
        )
    targets = adapter_config.get("target_modules")
    if not isinstance(targets, list) or not targets:
        problems.append(f"adapter_config.json: target_modules must be a list of module names, not {targets!r}")
    else:
        unservable = sorted(set(targets) - SERVABLE_TARGET_MODULES)
        if unservable:
            problems.append(
                f"adapter_config.json: target modules {unservable} cannot be served; use the decoder's linear "
                f"projections {sorted(SERVABLE_TARGET_MODULES)}"
            )
    if adapter_config.get("modules_to_save"):
        problems.append(
            f"adapter_config.json: modules_to_save={adapter_config['modules_to_save']} adds full weights that vLLM refuses"
        )
    if adapter_config.get("bias", "none") != "none":
        problems.append(f"adapter_config.json: bias={adapter_config['bias']!r}; vLLM serves adapters with bias 'none' only")
    return problems


def servable_max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` value vLLM accepts that can hold an adapter of `rank`."""
    return next(choice for choice in VLLM_MAX_LORA_RANKS if choice >= rank)


def tensor_problems(adapter_config: dict, adapter_header: dict, base_header: dict) -> list[str]:
    """The adapter's tensors against adapter_config.json and the base model's weights.

    Every tensor must be `<module>.lora_A.weight` with shape (r, in_features) or `.lora_B.weight`
    with shape (out_features, r), where the module exists in the base with weight (out, in), its last
    name is a target module, and every target module appears. Headers map name → (dtype, shape).
    """
    problems: list[str] = []
    r = adapter_config.get("r")
    targets = set(adapter_config.get("target_modules") or [])
    seen_targets: set[str] = set()
    for key, (_dtype, shape) in sorted(adapter_header.items()):
        match = _LORA_SUFFIX.search(key)
        if not match:
            problems.append(f"adapter_model.safetensors: {key} is not a LoRA tensor (lora_A/lora_B)")
            continue
        module = key[: match.start()].removeprefix(_PEFT_PREFIX)
        leaf = module.rsplit(".", 1)[-1]
        seen_targets.add(leaf)
        if leaf not in targets:
            problems.append(f"adapter_model.safetensors: {key} wraps {leaf}, which adapter_config.json does not target")
        base = base_header.get(f"{module}.weight")
        if base is None:
            problems.append(f"adapter_model.safetensors: {key} wraps {module}, which the base model does not have")
            continue
        base_shape = base[1]
        if len(shape) != 2 or len(base_shape) != 2:
            problems.append(f"adapter_model.safetensors: {key} has shape {shape}; LoRA tensors are matrices")
            continue
        out_features, in_features = base_shape
        expected = [r, in_features] if match["side"] == "A" else [out_features, r]
        if shape != expected:
            problems.append(
                f"adapter_model.safetensors: {key} has shape {shape}, expected {expected} "
                f"(rank r={r} from adapter_config.json, base weight {base_shape})"
            )
    for missing in sorted(targets - seen_targets):
        problems.append(f"adapter_model.safetensors: no tensors for target module {missing} named in adapter_config.json")
    return problems


def fingerprint_problems(folder: Path, manifest: Manifest, model_fp: str, tokenizer_fp: str) -> list[str]:
    """The manifest's fingerprints against the registry's base, and the carried tokenizer against both."""
    problems: list[str] = []
    if manifest.base_fingerprint != model_fp:
        problems.append(
            f"{MANIFEST_NAME}: base_fingerprint {manifest.base_fingerprint[:12]}… is not this registry's base model "
            f"({model_fp[:12]}…); train on the registry's base or use another registry"
        )
    if manifest.tokenizer_fingerprint != tokenizer_fp:
        problems.append(
            f"{MANIFEST_NAME}: tokenizer_fingerprint {manifest.tokenizer_fingerprint[:12]}… is not the base model's "
            f"tokenizer ({tokenizer_fp[:12]}…); prepare the data with the base model's tokenizer"
        )
    try:
        carried = tokenizer_fingerprint(folder)
    except (ModelError, OSError, ValueError) as exc:
        return problems + [f"tokenizer files: cannot be read ({exc})"]
    if carried != tokenizer_fp:
        problems.append(f"tokenizer files: the tokenizer in the artifact ({carried[:12]}…) is not the base model's ({tokenizer_fp[:12]}…)")
    return problems


def weights_problems(folder: Path, base_path: Path) -> list[str]:
    """Parse adapter_config.json and both safetensors headers, then run servable_problems and tensor_problems."""
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or config_path.is_symlink() or not weights_path.is_file() or weights_path.is_symlink():
        return []  # reported by checksum_problems / file_problems
    try:
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []  # reported by auto_map_problems
    problems = servable_problems(adapter_config)
    try:
        adapter_header = read_safetensors_header(weights_path)
    except ValueError as exc:
        return problems + [f"adapter_model.safetensors: corrupt safetensors header ({exc})"]
    base_header: dict = {}
    for weights in sorted(Path(base_path).glob("*.safetensors")):
        base_header.update(read_safetensors_header(weights))
    return problems + tensor_problems(adapter_config, adapter_header, base_header)


def _has_key(data: object, key: str) -> bool:
    if isinstance(data, dict):
        return key in data or any(_has_key(v, key) for v in data.values())
    if isinstance(data, list):
        return any(_has_key(v, key) for v in data)
    return False
