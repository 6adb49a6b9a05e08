"""Push checks: each function inspects one aspect of a staged artifact and returns the problems it found.

An empty list means the aspect is fine. Problems are sentences that name the file or field and say
what is wrong; push collects all of them so one attempt shows everything that needs fixing. They
read only the staged copy (intake.py) and the registry's base model, never the pushed folder.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from lorafleet.adapter_config import (  # noqa: F401  (servable_* and the constants are this module's interface too)
    PATTERN_KEY, SERVABLE_TARGET_MODULES, VLLM_MAX_LORA_RANKS, manifest_problems, servable_max_lora_rank, servable_problems,
)
from lorafleet.artifact import MANIFEST_NAME, Manifest, sha256_file
from lorafleet.bounded_json import JsonLimits, JsonRefused, iter_json_lines, load_json
from lorafleet.fingerprints import MAX_TEMPLATE_BYTES, TOKENIZER_FILES, Fingerprints, tokenizer_digest
from lorafleet.registry.schema import BaseModelRecord
from lorafleet.safetensors_header import ANY_DTYPE, LORA_DTYPES, HeaderError, read_header

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)
# Pickle-based weight formats execute code when loaded.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIX = re.compile(r"\.lora_(?P<side>[AB])\.weight$")

Documents = dict[str, object]  # relative path → parsed JSON (a .jsonl file: the list of its lines)


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


def file_problems(paths: Iterable[str]) -> list[str]:
    """Pickle weights and Python files among the artifact's (relative) file paths."""
    problems: list[str] = []
    for rel in sorted(paths):
        suffix = Path(rel).suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            problems.append(f"{rel}: pickle-format file; only safetensors weights are accepted (re-save with safe_serialization=True)")
        elif suffix == ".py":
            problems.append(f"{rel}: Python file; an artifact must not carry code (it would run with trust_remote_code)")
    return problems


# Keys refused at any depth of any JSON file in an artifact.
REFUSED_KEYS = {"auto_map": "it points loaders at custom code; remove it"}


def parse_documents(root: Path, paths: Iterable[str], limits: JsonLimits) -> tuple[Documents, list[str]]:
    """Parse every .json and .jsonl file within `limits`, refusing REFUSED_KEYS at any depth (checked as each
    object is decoded, not by a second walk); each failure is a problem naming the file."""
    documents: Documents = {}
    problems: list[str] = []
    for rel in sorted(paths):
        try:
            if rel.endswith(".json"):
                documents[rel] = load_json(root / rel, rel, limits, follow_symlinks=False, refused_keys=REFUSED_KEYS)
            elif rel.endswith(".jsonl"):
                documents[rel] = list(iter_json_lines(root / rel, rel, limits, refused_keys=REFUSED_KEYS))
        except JsonRefused as exc:
            problems.append(str(exc))
    return documents, problems


def adapter_problems(root: Path, documents: Documents, manifest: Manifest, base_path: Path) -> list[str]:
    """adapter_config.json against the manifest and vLLM, the adapter's safetensors header, and its tensors against the base."""
    config = documents.get("adapter_config.json")
    if not isinstance(config, dict) or not (root / "adapter_model.safetensors").is_file():
        # A missing or unparsable file is already reported (checksums, parse_documents); a non-object here:
        return [] if config is None or isinstance(config, dict) else manifest_problems(config, manifest.lora)
    problems = manifest_problems(config, manifest.lora) + servable_problems(config)
    try:
        adapter = read_header(root / "adapter_model.safetensors", LORA_DTYPES)
    except HeaderError as exc:
        return problems + [f"corrupt safetensors header: {exc}"]
    base_header: dict[str, tuple[str, list[int]]] = {}
    try:
        for weights in sorted(Path(base_path).glob("*.safetensors")):
            base_header.update((n, (t.dtype, list(t.shape))) for n, t in read_header(weights, ANY_DTYPE).tensors.items())
    except HeaderError as exc:
        return problems + [f"the registry's base model: {exc}"]
    adapter_header = {n: (t.dtype, list(t.shape)) for n, t in adapter.tensors.items()}
    return problems + tensor_problems(config, adapter_header, base_header)


def tensor_problems(adapter_config: dict, adapter_header: dict, base_header: dict) -> list[str]:
    """The adapter's tensors against adapter_config.json and the base model's weights.

    Every tensor must be `<module>.lora_A.weight` with shape (rank, in_features) or `.lora_B.weight`
    with shape (out_features, rank), where the module exists in the base with weight (out, in), its
    last name is a target module, and every target module appears. The rank is `r`, or the
    `rank_pattern` entry that matches the module (PEFT's rule: a key matches a suffix of the module
    name that starts at a dot; the first match wins). Headers map name → (dtype, shape).
    """
    problems: list[str] = []
    listed = adapter_config.get("target_modules")
    # Anything but a list of names is servable_problems' refusal; here it just targets nothing.
    targets = set(listed) if isinstance(listed, list) and all(isinstance(t, str) for t in listed) else set()
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
        r, source = _module_rank(adapter_config, module)
        out_features, in_features = base_shape
        expected = [r, in_features] if match["side"] == "A" else [out_features, r]
        if shape != expected:
            problems.append(
                f"adapter_model.safetensors: {key} has shape {shape}, expected {expected} "
                f"(rank {r} from adapter_config.json's {source}, base weight {base_shape})"
            )
    for missing in sorted(targets - seen_targets):
        problems.append(f"adapter_model.safetensors: no tensors for target module {missing} named in adapter_config.json")
    return problems


class RegistryBase(NamedTuple):
    """The registry's pinned base: its record, its folder on this machine, and its current fingerprints."""

    record: BaseModelRecord
    path: Path
    fingerprints: Fingerprints


def fingerprint_problems(root: Path, documents: Documents, checksums: dict[str, str], manifest: Manifest, base: RegistryBase) -> list[str]:
    """The manifest's fingerprints against the registry's base, and the carried tokenizer against the base's.

    A format-1 manifest (base fingerprint of scheme 1, without weight values) is refused with the
    way forward. The carried tokenizer is fingerprinted from the staged copy (`checksums` are its
    files' sha256), never from a cache; when its files are byte for byte the base's, the digest is
    the base's by construction and is not recomputed.
    """
    name, fingerprints = base.record.name, base.fingerprints
    problems: list[str] = []
    if manifest.format_version < 2:
        problems.append(_legacy_problem(manifest, name, fingerprints))
    elif manifest.base_fingerprint != fingerprints.model:
        problems.append(
            f"{MANIFEST_NAME}: base_fingerprint {manifest.base_fingerprint} is not this registry's base model {name} "
            f"(fingerprint {fingerprints.model}): the adapter was trained on other weights (the fingerprint covers weight "
            "values); train it on the registry's base, or push it to a registry of its own base"
        )
    if manifest.tokenizer_fingerprint != fingerprints.tokenizer:
        problems.append(
            f"{MANIFEST_NAME}: tokenizer_fingerprint {manifest.tokenizer_fingerprint[:12]}… is not the base model's "
            f"tokenizer ({fingerprints.tokenizer[:12]}…); prepare the data with the base model's tokenizer"
        )
    if _same_tokenizer_files(checksums, base.path):
        return problems
    try:
        carried = _carried_tokenizer(root, documents)
    except ValueError as exc:
        return problems + [f"tokenizer files: cannot be read ({exc})"]
    if carried is None:
        problems.append("tokenizer files: the artifact carries no tokenizer.json (train copies the base's tokenizer in)")
    elif carried != fingerprints.tokenizer:
        problems.append(f"tokenizer files: the tokenizer in the artifact ({carried[:12]}…) is not the base model's ({fingerprints.tokenizer[:12]}…)")
    return problems


def _same_tokenizer_files(checksums: dict[str, str], base_path: Path) -> bool:
    """True when the tokenizer fingerprint's input files are present in both or neither, with equal bytes."""
    if "tokenizer.json" not in checksums:
        return False
    for name in TOKENIZER_FILES:
        base_file = base_path / name
        if (name in checksums) != base_file.is_file() or (name in checksums and sha256_file(base_file) != checksums[name]):
            return False
    return True


def _legacy_problem(manifest: Manifest, base_name: str, base: Fingerprints) -> str:
    if manifest.base_fingerprint == base.legacy_model:
        return (
            f"{MANIFEST_NAME}: format_version 1: its base_fingerprint {manifest.base_fingerprint[:12]}… was computed by an "
            "earlier lorafleet that covered the base's config, tensor shapes and tokenizer but not its weight values, so "
            f"it cannot show the adapter was trained on {base_name} rather than another model of the same architecture. "
            "Re-train it on the base, or, if you know it was trained on this base, run `lorafleet adapters restamp "
            "ARTIFACT` (it re-checks the artifact and records the current fingerprint) and push again"
        )
    return (
        f"{MANIFEST_NAME}: format_version 1: its base_fingerprint {manifest.base_fingerprint} does not match this "
        f"registry's base model {base_name} even under the earlier fingerprint scheme ({base.legacy_model}): it was "
        "trained on another model; train it on the registry's base"
    )


def _carried_tokenizer(root: Path, documents: Documents) -> str | None:
    """The artifact's tokenizer fingerprint, None when it has no tokenizer.json; ValueError when unreadable."""
    if "tokenizer.json" not in documents:
        if (root / "tokenizer.json").is_file():
            raise ValueError("tokenizer.json did not parse")
        return None
    template = None
    template_file = root / "chat_template.jinja"
    if template_file.is_file():
        data = template_file.read_bytes()
        if len(data) > MAX_TEMPLATE_BYTES:
            raise ValueError(f"chat_template.jinja is larger than {MAX_TEMPLATE_BYTES:,} bytes")
        try:
            template = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"chat_template.jinja is not UTF-8 ({exc.reason})") from None
    return tokenizer_digest(documents["tokenizer.json"], documents.get("tokenizer_config.json") or {}, template)


def _module_rank(adapter_config: dict, module: str) -> tuple[object, str]:
    pattern = adapter_config.get("rank_pattern")
    for key, rank in (pattern.items() if isinstance(pattern, dict) else ()):
        # Only module-name keys get here (servable_problems refuses others), so this regex cannot backtrack badly.
        if PATTERN_KEY.fullmatch(key) and re.match(rf"(.*\.)?({key})$", module):
            return rank, f"rank_pattern[{key!r}]"
    return adapter_config.get("r"), "r"
