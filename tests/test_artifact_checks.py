"""Limited JSON parsing and full safetensors header checks: tables of pure cases, then real files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lorafleet.bounded_json import JsonLimits, JsonRefused, iter_json_lines, load_json, parse_json
from lorafleet.safetensors_header import ANY_DTYPE, LORA_DTYPES, HeaderError, check_header, read_header

JSON_CASES: dict[str, tuple[bytes | str, str | None]] = {
    "object": ('{"a": [1, {"b": null}]}', None),
    "64 levels": ("[" * 64 + "]" * 64, None),
    "65 levels": ("[" * 65 + "]" * 65, "nested 65 levels deep, more than the 64 allowed"),
    "900 levels": ("[" * 900 + "]" * 900, "nested 900 levels deep"),
    "10,000 levels": ("[" * 10_000 + "]" * 10_000, "nested deeper than 64 levels"),
    "10,000 levels of objects": ('{"a":' * 10_000 + "1" + "}" * 10_000, "nested deeper than 64 levels"),
    "duplicate key": ('{"r": 8, "r": 64}', "the key 'r' appears twice"),
    "nested duplicate": ('{"x": {"a": 1, "a": 1}}', "the key 'a' appears twice"),
    "NaN": ('{"a": NaN}', "NaN is not a JSON value"),
    "Infinity": ("[-Infinity]", "-Infinity is not a JSON value"),
    "not UTF-8": (b'{"a": "\xff"}', "not UTF-8 text"),
    "truncated": ('{"a": ', "not valid JSON"),
    "trailing data": ("{} {}", "not valid JSON"),
}


@pytest.mark.parametrize("case", JSON_CASES, ids=list(JSON_CASES))
def test_parse_json_limits(case: str) -> None:
    data, expected = JSON_CASES[case]
    if expected is None:
        assert parse_json(data, "x.json") == json.loads(data)
        return
    with pytest.raises(JsonRefused) as refused:
        parse_json(data, "x.json")
    assert str(refused.value).startswith("x.json: ") and expected in str(refused.value)


def test_size_cap_is_applied_before_parsing(tmp_path: Path) -> None:
    with pytest.raises(JsonRefused, match="larger than the"):
        parse_json(b"1" * 11, "x.json", JsonLimits(max_bytes=10))
    big = tmp_path / "big.json"
    big.write_text("[" + " " * 2000 + "]")
    with pytest.raises(JsonRefused, match=r"big.json: 2,002 bytes or more, larger than"):
        load_json(big, limits=JsonLimits(max_bytes=1000))
    assert load_json(big, limits=JsonLimits(max_bytes=3000)) == []


def test_json_lines_name_the_line(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n\n' + "[" * 100 + "]" * 100 + "\n")
    lines = iter_json_lines(log)
    assert next(lines) == {"step": 1}
    with pytest.raises(JsonRefused, match="metrics.jsonl line 3: nested 100 levels"):
        next(lines)


def test_symlinks_are_refused_when_asked(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to("real.json")
    assert load_json(tmp_path / "link.json") == {}
    with pytest.raises(JsonRefused, match="link.json: cannot be read"):
        load_json(tmp_path / "link.json", follow_symlinks=False)


def _t(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


GOOD = {"__metadata__": {"format": "pt"}, "a": _t("F32", [2, 2], 0, 16), "b": _t("F32", [2, 2], 16, 32)}
HEADER_CASES: dict[str, tuple[object, int, frozenset[str], str | None]] = {
    "good": (GOOD, 32, ANY_DTYPE, None),
    "zero-size tensor": ({**GOOD, "z": _t("BF16", [0, 4], 32, 32)}, 32, ANY_DTYPE, None),
    "overlap": ({"a": _t("F32", [2, 2], 0, 16), "b": _t("F32", [2, 2], 8, 24)}, 24, ANY_DTYPE, "tensors a and b overlap"),
    "same range twice": ({"a": _t("F32", [2, 2], 0, 16), "b": _t("F32", [2, 2], 0, 16)}, 16, ANY_DTYPE, "overlap"),
    "past the end": ({"a": _t("F32", [2, 2], 0, 16), "b": _t("F32", [2, 2], 16, 32)}, 24, ANY_DTYPE, "outside the file"),
    "gap": ({"a": _t("F32", [2, 2], 0, 16), "b": _t("F32", [2, 2], 20, 36)}, 36, ANY_DTYPE, "[16, 20) of the data region belong to no tensor"),
    "not from 0": ({"a": _t("F32", [2, 2], 4, 20)}, 20, ANY_DTYPE, "[0, 4) of the data region belong to no tensor"),
    "trailing bytes": (GOOD, 40, ANY_DTYPE, "[32, 40) at the end of the data region"),
    "size mismatch": ({"a": _t("F32", [2, 2], 0, 12)}, 12, ANY_DTYPE, "needs 16 bytes"),
    "dtype not allowed": ({"a": _t("I32", [2, 2], 0, 16)}, 16, LORA_DTYPES, "dtype I32 is not allowed here"),
    "unknown dtype": ({"a": _t("Q4_K", [2, 2], 0, 16)}, 16, ANY_DTYPE, "unknown dtype 'Q4_K'"),
    "negative dim": ({"a": _t("F32", [-1, 4], 0, 16)}, 16, ANY_DTYPE, "not a list of non-negative integers"),
    "bool dim": ({"a": _t("F32", [True, 4], 0, 16)}, 16, ANY_DTYPE, "not a list of non-negative integers"),
    "reversed offsets": ({"a": _t("F32", [0], 16, 0)}, 16, ANY_DTYPE, "0 <= begin <= end"),
    "extra key": ({"a": {**_t("F32", [2, 2], 0, 16), "offset": 3}}, 16, ANY_DTYPE, "exactly dtype, shape and data_offsets"),
    "bad metadata": ({**GOOD, "__metadata__": {"n": 1}}, 32, ANY_DTYPE, "__metadata__ must map strings to strings"),
    "not an object": ([1, 2], 0, ANY_DTYPE, "not an object"),
}


@pytest.mark.parametrize("case", HEADER_CASES, ids=list(HEADER_CASES))
def test_check_header(case: str) -> None:
    header, data_length, dtypes, expected = HEADER_CASES[case]
    tensors, problems = check_header(header, data_length, dtypes)
    if expected is None:
        assert problems == [] and set(tensors) == set(header) - {"__metadata__"}  # type: ignore[arg-type]
    else:
        assert any(expected in p for p in problems), problems


def _write(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_read_header_on_files_written_by_safetensors(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3, 5), "b": torch.ones(5, dtype=torch.bfloat16)}, tmp_path / "ok.safetensors")
    header = read_header(tmp_path / "ok.safetensors", LORA_DTYPES)
    assert {(t.name, t.dtype, t.shape) for t in header.tensors.values()} == {("w", "F32", (3, 5)), ("b", "BF16", (5,))}
    _write(tmp_path / "overlap.safetensors", {"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 4, 12)}, bytes(12))
    with pytest.raises(HeaderError, match="overlap.safetensors: .*overlap"):
        read_header(tmp_path / "overlap.safetensors")
    with pytest.raises(HeaderError, match="header length"):
        (tmp_path / "short.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
        read_header(tmp_path / "short.safetensors")
    deep = tmp_path / "deep.safetensors"
    raw = b"[" * 5000 + b"]" * 5000
    deep.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(HeaderError, match="deep.safetensors header: nested deeper than 64 levels"):
        read_header(deep)
