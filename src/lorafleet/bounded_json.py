"""JSON written by someone else, parsed with limits: a size cap, a nesting cap, no duplicate keys, no NaN.

Every JSON file the registry's checks and the fingerprints read goes through here, so a malformed
or hostile file becomes a `JsonRefused` that names the file and the problem, never a traceback
(`RecursionError` from deep nesting, memory exhaustion from a huge file). Duplicate keys and the
non-standard constants NaN/Infinity are refused because parsers disagree about them: Python keeps
the last duplicate, others keep the first or fail, so one file could mean two things.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

# Large enough for the biggest tokenizer.json files in use (about 35 MB for 256k-token vocabularies).
MAX_JSON_BYTES = 64 * 2**20
# Hugging Face and PEFT files nest 3 to 8 levels deep; 64 leaves room without letting a file recurse far.
MAX_JSON_DEPTH = 64


class JsonRefused(ValueError):
    """A JSON document that breaks a limit or does not parse; the message starts with where it came from."""


@dataclass(frozen=True)
class JsonLimits:
    """How much a parsed document may hold."""

    max_bytes: int = MAX_JSON_BYTES
    max_depth: int = MAX_JSON_DEPTH


DEFAULT_LIMITS = JsonLimits()


def read_capped(path: Path, max_bytes: int, where: str, follow_symlinks: bool = True) -> bytes:
    """At most `max_bytes` of `path`; raises JsonRefused (never reads past the cap) when the file is larger.

    With `follow_symlinks=False` a symlink is refused instead of followed (O_NOFOLLOW).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise JsonRefused(f"{where}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = os.stat(path).st_size if follow_symlinks else len(data)
        raise JsonRefused(f"{where}: {size:,} bytes or more, larger than the {_mib(max_bytes)} a JSON file may have")
    return data


def parse_json(data: bytes | str, where: str, limits: JsonLimits = DEFAULT_LIMITS, refused_keys: Mapping[str, str] = {}) -> object:
    """Parse one JSON document within `limits`; raises JsonRefused naming `where` and the problem.

    `refused_keys` maps object keys that must not appear at any depth to the reason given when one does.
    """
    if len(data) > limits.max_bytes:
        raise JsonRefused(f"{where}: {len(data):,} bytes, larger than the {_mib(limits.max_bytes)} a JSON file may have")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        hook = _unique_keys if not refused_keys else partial(_unique_keys, refused_keys=refused_keys)
        value = json.loads(text, object_pairs_hook=hook, parse_constant=_no_constant)
    except RecursionError:
        # The C decoder stops at the interpreter's recursion limit (about 1,000 levels); anything that
        # deep is far past max_depth, so it is the same refusal.
        raise JsonRefused(f"{where}: nested deeper than {limits.max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except _Refusal as exc:
        raise JsonRefused(f"{where}: {exc}") from None
    depth = nesting_depth(value)
    if depth > limits.max_depth:
        raise JsonRefused(f"{where}: nested {depth} levels deep, more than the {limits.max_depth} allowed")
    return value


def load_json(
    path: Path, where: str | None = None, limits: JsonLimits = DEFAULT_LIMITS, follow_symlinks: bool = True,
    refused_keys: Mapping[str, str] = {},
) -> object:
    """Read and parse the JSON file at `path` within `limits` (see read_capped and parse_json)."""
    label = where or Path(path).name
    return parse_json(read_capped(path, limits.max_bytes, label, follow_symlinks), label, limits, refused_keys)


def iter_json_lines(
    path: Path, where: str | None = None, limits: JsonLimits = DEFAULT_LIMITS, refused_keys: Mapping[str, str] = {},
) -> Iterator[object]:
    """Each non-blank line of a JSON Lines file, parsed within `limits` (the size cap is for the whole file)."""
    label = where or Path(path).name
    data = read_capped(path, limits.max_bytes, label, follow_symlinks=False)
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            yield parse_json(line, f"{label} line {number}", limits, refused_keys)


def nesting_depth(value: object) -> int:
    """Levels of arrays and objects in `value` (a scalar is 0); level by level, so any depth is safe to measure."""
    depth = 0
    level = [value] if type(value) in (dict, list) else []
    while level:
        depth += 1
        below: list[object] = []
        for item in level:  # parsed JSON holds exactly dict and list, so `type(...) is` suffices (and is fast)
            below += [c for c in (item.values() if type(item) is dict else item) if type(c) is dict or type(c) is list]  # type: ignore[union-attr]
        level = below
    return depth


class _Refusal(ValueError):
    """Raised inside the decoder's hooks; parse_json turns it into JsonRefused with the file's name."""


def _unique_keys(pairs: list[tuple[str, object]], refused_keys: Mapping[str, str] = {}) -> dict[str, object]:
    result = dict(pairs)
    for key in refused_keys:
        if key in result:
            raise _Refusal(f"has an {key!r} entry: {refused_keys[key]}")
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refusal(f"the key {key!r} appears twice in one object (parsers disagree on which one counts)")
            seen.add(key)
    return result


def _no_constant(name: str) -> object:
    raise _Refusal(f"{name} is not a JSON value")


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"
