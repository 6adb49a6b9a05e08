"""A safetensors file's header, read and checked in full without loading any tensor.

Layout: 8 bytes (little-endian N), N bytes of JSON header, then the data region. The header maps each
tensor name to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets into the data region) and
may hold `"__metadata__"` (string → string). `check_header` accepts a header only when:

- every dtype is a known one and on the caller's allow-list;
- every shape is a list of non-negative integers and `end - begin` is its element count times the
  dtype's size;
- the byte ranges, in offset order, start at 0 and follow each other with no gap and no overlap, and
  the last one ends exactly where the file ends.

These are the rules the safetensors library applies when it loads a file, so a header that passes
here describes exactly the bytes a loader will read.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from lorafleet.bounded_json import JsonLimits, JsonRefused, parse_json

# The safetensors library refuses headers above this size.
MAX_HEADER_BYTES = 100_000_000
# Bytes per element of every dtype the safetensors format names (sub-byte FP4/FP6 types are left out).
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
ANY_DTYPE = frozenset(DTYPE_BYTES)
# LoRA weights as vLLM and PEFT load them: floating point in one of the training precisions.
LORA_DTYPES = frozenset({"F32", "F16", "BF16"})
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class HeaderError(ValueError):
    """A file whose safetensors header is unreadable or breaks the rules above; the message names the file."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; `begin`/`end` are offsets into the data region."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked header: its tensors by name, and where the data region starts in the file."""

    tensors: dict[str, TensorEntry]
    data_start: int


def read_header(path: Path, allowed_dtypes: frozenset[str] = ANY_DTYPE, where: str | None = None) -> SafetensorsHeader:
    """Read and check the header of the safetensors file at `path`; raises HeaderError listing what is wrong."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_header_fd(fd, allowed_dtypes, where or Path(path).name)
    finally:
        os.close(fd)


def read_header_fd(fd: int, allowed_dtypes: frozenset[str], where: str) -> SafetensorsHeader:
    """The same as read_header for an open file descriptor (the file's size is taken from fstat)."""
    size = os.fstat(fd).st_size
    prefix = os.pread(fd, 8, 0)
    if len(prefix) != 8:
        raise HeaderError(f"{where}: {size} bytes, too short to be a safetensors file")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(size - 8, MAX_HEADER_BYTES):
        raise HeaderError(
            f"{where}: header length {length:,} does not fit the file of {size:,} bytes "
            f"(or exceeds the {MAX_HEADER_BYTES:,}-byte limit)"
        )
    raw = os.pread(fd, length, 8)
    try:
        header = parse_json(raw, f"{where} header", JsonLimits(max_bytes=MAX_HEADER_BYTES))
    except JsonRefused as exc:
        raise HeaderError(str(exc)) from None
    tensors, problems = check_header(header, size - 8 - length, allowed_dtypes)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise HeaderError(f"{where}: {shown}")
    return SafetensorsHeader(tensors, 8 + length)


def check_header(header: object, data_length: int, allowed_dtypes: frozenset[str]) -> tuple[dict[str, TensorEntry], list[str]]:
    """The tensors a parsed header describes, and every rule it breaks (see the module docstring).

    `data_length` is the size of the data region (file size - 8 - header length). Pure: no I/O.
    """
    if not isinstance(header, dict):
        return {}, [f"the header is a JSON {type(header).__name__}, not an object"]
    problems: list[str] = []
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        problems.append("__metadata__ must map strings to strings")
    tensors: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entry = _entry(name, info, allowed_dtypes, problems)
        if entry is not None:
            tensors[name] = entry
    problems += _layout_problems(sorted(tensors.values(), key=lambda t: (t.begin, t.end)), data_length)
    return tensors, problems


def _entry(name: str, info: object, allowed_dtypes: frozenset[str], problems: list[str]) -> TensorEntry | None:
    if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
        keys = sorted(info) if isinstance(info, dict) else type(info).__name__
        problems.append(f"tensor {name}: entry must have exactly dtype, shape and data_offsets, not {keys}")
        return None
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        problems.append(f"tensor {name}: unknown dtype {dtype!r}")
        return None
    if dtype not in allowed_dtypes:
        problems.append(f"tensor {name}: dtype {dtype} is not allowed here (allowed: {', '.join(sorted(allowed_dtypes))})")
        return None
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        problems.append(f"tensor {name}: shape {shape!r} is not a list of non-negative integers")
        return None
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) or offsets[0] > offsets[1]:
        problems.append(f"tensor {name}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
        return None
    begin, end = offsets
    needed = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != needed:
        problems.append(
            f"tensor {name}: shape {shape} of {dtype} needs {needed:,} bytes, its data_offsets [{begin}, {end}] "
            f"hold {end - begin:,}"
        )
        return None
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _layout_problems(ordered: list[TensorEntry], data_length: int) -> list[str]:
    """Byte ranges in offset order must tile [0, data_length) exactly."""
    problems: list[str] = []
    position, previous = 0, None
    for tensor in ordered:
        if tensor.end > data_length:
            problems.append(
                f"tensor {tensor.name}: data_offsets [{tensor.begin}, {tensor.end}] end past the data region "
                f"({data_length:,} bytes): outside the file"
            )
        if tensor.begin < position:
            problems.append(
                f"tensors {previous} and {tensor.name} overlap: {tensor.name} starts at {tensor.begin}, "
                f"before {previous} ends at {position}"
            )
        elif tensor.begin > position:
            problems.append(f"bytes [{position}, {tensor.begin}) of the data region belong to no tensor (a gap before {tensor.name})")
        if tensor.end >= position:
            position, previous = tensor.end, tensor.name
    if position < data_length:
        problems.append(f"bytes [{position}, {data_length}) at the end of the data region belong to no tensor")
    return problems


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
