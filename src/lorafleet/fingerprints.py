"""Fingerprints: what identifies a base model and a tokenizer, and the cache that keeps them cheap.

The model fingerprint (scheme 2) is the sha256 over, in this order:

1. the scheme tag `lorafleet model fingerprint scheme 2`;
2. `config.json` as canonical JSON (sorted keys), without `_name_or_path` and `transformers_version`;
3. every tensor of every `*.safetensors` file in the folder, by name: its dtype, its shape and the
   sha256 of its bytes;
4. the tokenizer fingerprint: `tokenizer.json` as canonical JSON, the special-token settings of
   `tokenizer_config.json` (bos/eos/pad/unk tokens, add_bos/add_eos) and the chat template
   (`chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`).

It does not cover: how tensors are split across shard files, the files' names and their
`__metadata__`, `generation_config.json`, other tokenizer files, files in subfolders, non-safetensors
weights, or the code that runs the model (transformers, vLLM). Two fine-tunes of one architecture
differ in step 3. Scheme 1 (lorafleet before weight values were covered) hashed steps 2, 3 without
the byte digests, and 4; `legacy_model` still computes it, to recognise old artifacts and registries.

Reading every weight once costs about 0.3 s per GB here (sha256 in threads), so the result is cached
under `LORAFLEET_CACHE/fingerprints/`, keyed by each input file's (device, inode, size, mtime, ctime).
The ctime is set by the kernel on every change and cannot be set back by the file's owner, so an edit
that keeps the size and restores the mtime still misses the cache. Two more rules keep the cache
honest: a file that changes while it is being read is an error, not an entry; and no entry is written
while any input changed within the last `settle_s` seconds, since timestamps are coarse and a second
edit within the same tick would otherwise look unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from lorafleet import atomic
from lorafleet.bounded_json import MAX_JSON_BYTES, JsonRefused, load_json, parse_json
from lorafleet.models import ModelError
from lorafleet.paths import cache_dir
from lorafleet.safetensors_header import ANY_DTYPE, HeaderError, read_header_fd

SCHEME = 2
_SCHEME_TAG = b"lorafleet model fingerprint scheme 2\n"
# Keys of config.json that name where a model came from, not what it computes.
_CONFIG_KEYS_IGNORED = {"_name_or_path", "transformers_version"}
# Keys of tokenizer_config.json that change how text becomes tokens.
_TOKENIZER_CONFIG_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token", "add_eos_token")
# The files the tokenizer fingerprint reads (equal bytes in these give an equal fingerprint).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
_TEXT_INPUTS = {"config.json", *TOKENIZER_FILES}
_CHUNK = 8 * 2**20
MAX_TEMPLATE_BYTES = 1 * 2**20

ProgressCallback = Callable[[int, int], None]  # (bytes hashed so far, bytes to hash in all)


@dataclass(frozen=True)
class Fingerprints:
    """A base model's fingerprints (see the module docstring for what each covers)."""

    model: str  # scheme 2: config, tensors with their values, tokenizer
    tokenizer: str
    legacy_model: str  # scheme 1: config, tensor names/dtypes/shapes, tokenizer; no values


@dataclass(frozen=True)
class FingerprintCache:
    """Where computed fingerprints are kept; `settle_s` is how old every input must be before an entry is written."""

    root: Path
    settle_s: float = 2.0


def default_cache() -> FingerprintCache:
    return FingerprintCache(cache_dir() / "fingerprints")


def base_fingerprints(
    path: Path, on_progress: ProgressCallback | None = None, cache: FingerprintCache | None = None,
) -> Fingerprints:
    """The fingerprints of the model folder at `path`, from the cache when its inputs are unchanged.

    Raises ModelError when the folder lacks config.json or tokenizer.json, when a file the
    fingerprint reads is malformed (named in the message), or when one changes while being read.
    """
    folder = Path(path).resolve()
    cache = cache or default_cache()
    inputs = _open_inputs(folder)
    try:
        key = _cache_key(inputs)
        cached = _cache_read(cache, key)
        if cached is not None:
            return cached
        result = _compute(folder, inputs, on_progress)
        _require_unchanged(folder, inputs)
        if _settled(inputs, cache.settle_s):
            cache.root.mkdir(parents=True, exist_ok=True)
            atomic.write_text(cache.root / f"{key}.json", json.dumps(result.__dict__))
        return result
    finally:
        for _, fd, _ in inputs:
            os.close(fd)


def folder_tokenizer_fingerprint(path: Path) -> str:
    """The tokenizer fingerprint of any folder with a tokenizer (base model or artifact); never cached."""
    folder = Path(path)
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ModelError(f"{folder} has no tokenizer.json (a fast tokenizer is required)")
    try:
        config_file = folder / "tokenizer_config.json"
        config = load_json(config_file) if config_file.is_file() else {}
        template_file = folder / "chat_template.jinja"
        template = _capped_text(template_file.read_bytes(), "chat_template.jinja") if template_file.is_file() else None
        return tokenizer_digest(load_json(tokenizer_json), config, template)
    except JsonRefused as exc:
        raise ModelError(f"{folder}: {exc}") from None


def tokenizer_digest(tokenizer_json: object, tokenizer_config: object, template: str | None) -> str:
    """sha256 over the parsed tokenizer.json, the token settings of tokenizer_config.json and the chat template.

    `template` is the text of chat_template.jinja, or None to take tokenizer_config's `chat_template`. Pure.
    """
    config = tokenizer_config if isinstance(tokenizer_config, dict) else {}
    if template is None:
        template = config.get("chat_template") or ""
        template = template if isinstance(template, str) else _canonical_json(template).decode()
    digest = hashlib.sha256()
    digest.update(_canonical_json(tokenizer_json))
    digest.update(_canonical_json({k: config.get(k) for k in _TOKENIZER_CONFIG_KEYS}))
    digest.update(template.encode("utf-8"))
    return digest.hexdigest()


def model_digest(config: dict, tensors: dict[str, tuple[str, list[int], str]], tokenizer: str) -> str:
    """Scheme 2 from parsed parts: tensors map name → (dtype, shape, sha256 of the bytes). Pure."""
    digest = hashlib.sha256(_SCHEME_TAG)
    digest.update(_canonical_json({k: v for k, v in config.items() if k not in _CONFIG_KEYS_IGNORED}))
    digest.update(_canonical_json({name: list(entry) for name, entry in tensors.items()}))
    digest.update(tokenizer.encode())
    return digest.hexdigest()


def legacy_model_digest(config: dict, tensors: dict[str, tuple[str, list[int], str]], tokenizer: str) -> str:
    """Scheme 1 from the same parts: the byte digests are left out. Pure."""
    digest = hashlib.sha256()
    digest.update(_canonical_json({k: v for k, v in config.items() if k not in _CONFIG_KEYS_IGNORED}))
    digest.update(_canonical_json({name: [dtype, shape] for name, (dtype, shape, _) in tensors.items()}))
    digest.update(tokenizer.encode())
    return digest.hexdigest()


_Input = tuple[str, int, os.stat_result]  # (file name, open descriptor, its fstat when opened)


def _open_inputs(folder: Path) -> list[_Input]:
    """Open every file the fingerprint reads. Links are followed: Hugging Face caches link weights to blobs."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json: not a model folder")
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"{folder} has no tokenizer.json (a fast tokenizer is required)")
    inputs: list[_Input] = []
    try:
        for name in sorted(os.listdir(folder)):
            if name.endswith(".safetensors") or name in _TEXT_INPUTS:
                fd = os.open(folder / name, os.O_RDONLY | os.O_CLOEXEC)
                inputs.append((name, fd, os.fstat(fd)))
                if not stat.S_ISREG(inputs[-1][2].st_mode):
                    raise ModelError(f"{folder / name} is not a regular file")
    except BaseException:
        for _, fd, _ in inputs:
            os.close(fd)
        raise
    return inputs


def _cache_key(inputs: list[_Input]) -> str:
    identity = [[name, s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns] for name, _, s in inputs]
    return hashlib.sha256(json.dumps([SCHEME, identity]).encode()).hexdigest()


def _cache_read(cache: FingerprintCache, key: str) -> Fingerprints | None:
    path = cache.root / f"{key}.json"
    if not path.is_file():
        return None
    try:
        entry = load_json(path)
    except JsonRefused:
        return None  # a damaged entry is recomputed and rewritten
    fields = set(Fingerprints.__dataclass_fields__)
    if not isinstance(entry, dict) or set(entry) != fields or not all(_is_sha256(v) for v in entry.values()):
        return None
    return Fingerprints(**entry)


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _compute(folder: Path, inputs: list[_Input], on_progress: ProgressCallback | None) -> Fingerprints:
    by_name = {name: fd for name, fd, _ in inputs}
    try:
        config = parse_json(_read_all(by_name["config.json"], "config.json"), "config.json")
        tokenizer_config = (
            parse_json(_read_all(by_name["tokenizer_config.json"], "tokenizer_config.json"), "tokenizer_config.json")
            if "tokenizer_config.json" in by_name else {}
        )
        template = (
            _capped_text(_read_all(by_name["chat_template.jinja"], "chat_template.jinja", MAX_TEMPLATE_BYTES), "chat_template.jinja")
            if "chat_template.jinja" in by_name else None
        )
        tokenizer = tokenizer_digest(
            parse_json(_read_all(by_name["tokenizer.json"], "tokenizer.json"), "tokenizer.json"), tokenizer_config, template,
        )
        if not isinstance(config, dict):
            raise ModelError(f"{folder / 'config.json'} is not a JSON object")
        tensors = _tensor_digests([(name, fd) for name, fd, _ in inputs if name.endswith(".safetensors")], on_progress)
    except (JsonRefused, HeaderError) as exc:
        raise ModelError(f"{folder}: {exc}") from None
    return Fingerprints(
        model=model_digest(config, tensors, tokenizer), tokenizer=tokenizer,
        legacy_model=legacy_model_digest(config, tensors, tokenizer),
    )


def _tensor_digests(files: list[tuple[str, int]], on_progress: ProgressCallback | None) -> dict[str, tuple[str, list[int], str]]:
    """name → (dtype, shape, sha256 of its bytes) over every file; tensors are hashed in parallel threads
    (hashlib releases the GIL), each read once with pread."""
    jobs: list[tuple[str, str, list[int], int, int, int]] = []  # (name, dtype, shape, fd, start, end)
    seen: set[str] = set()
    for file_name, fd in files:
        header = read_header_fd(fd, ANY_DTYPE, file_name)
        for t in header.tensors.values():
            if t.name in seen:
                raise ModelError(f"tensor {t.name} appears in more than one safetensors file (again in {file_name})")
            seen.add(t.name)
            jobs.append((t.name, t.dtype, list(t.shape), fd, header.data_start + t.begin, header.data_start + t.end))
    total, done = sum(end - start for *_, start, end in jobs), 0
    result: dict[str, tuple[str, list[int], str]] = {}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        futures = {pool.submit(_sha256_range, fd, start, end): (name, dtype, shape, end - start)
                   for name, dtype, shape, fd, start, end in jobs}
        for future in as_completed(futures):
            name, dtype, shape, size = futures[future]
            result[name] = (dtype, shape, future.result())
            done += size
            if on_progress is not None:
                on_progress(done, total)
    return dict(sorted(result.items()))


def _sha256_range(fd: int, start: int, end: int) -> str:
    digest = hashlib.sha256()
    position = start
    while position < end:
        chunk = os.pread(fd, min(_CHUNK, end - position), position)
        if not chunk:
            raise ModelError("a safetensors file ended early while it was being fingerprinted")
        digest.update(chunk)
        position += len(chunk)
    return digest.hexdigest()


def _require_unchanged(folder: Path, inputs: list[_Input]) -> None:
    for name, fd, before in inputs:
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (before.st_size, before.st_mtime_ns, before.st_ctime_ns):
            raise ModelError(f"{folder / name} changed while it was being fingerprinted; run again once nothing writes to it")


def _settled(inputs: list[_Input], settle_s: float) -> bool:
    newest = max(max(s.st_mtime_ns, s.st_ctime_ns) for _, _, s in inputs)
    return time.time_ns() - newest >= settle_s * 1e9


def _read_all(fd: int, name: str, cap: int = MAX_JSON_BYTES) -> bytes:
    size = os.fstat(fd).st_size
    if size > cap:
        raise JsonRefused(f"{name}: {size:,} bytes, larger than the {cap / 2**20:g} MiB allowed")
    return os.pread(fd, size, 0)  # a file that grows meanwhile fails _require_unchanged


def _capped_text(data: bytes, name: str) -> str:
    if len(data) > MAX_TEMPLATE_BYTES:
        raise JsonRefused(f"{name}: larger than the {MAX_TEMPLATE_BYTES / 2**20:g} MiB a chat template may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
