"""Reading and validating input lines: the four formats, every parse/validation rejection, BOM, CRLF, gzip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lorafleet.data import formats
from lorafleet.data.formats import (
    MAX_LINE_BYTES, RAW_PREVIEW_CHARS, Record, RejectedLine, UnreadableInput, parse_line, read_lines,
)
from lorafleet.data.validate import Reason

from chat_files import gzipped_chats, write_cut_gzip, write_jsonl

HELLO = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def parse_one(line: dict | str | bytes, tmp_path: Path) -> Record | RejectedLine:
    (raw,) = list(read_lines(write_jsonl(tmp_path / "in.jsonl", [line])))
    return parse_line(raw)


@pytest.mark.parametrize(
    ("record", "fmt", "expected"),
    [
        ({"messages": HELLO}, "openai", HELLO),
        ({"conversations": HELLO}, "conversations", HELLO),
        (
            {"conversations": [{"from": "system", "value": "Be nice"}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
            "sharegpt",
            [{"role": "system", "content": "Be nice"}] + HELLO,
        ),
        ({"instruction": "Hi", "input": "", "output": "Hello!"}, "alpaca", HELLO),
        (
            {"instruction": "Translate", "input": "chat", "output": "cat"},
            "alpaca",
            [{"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}],
        ),
        ({"instruction": "Hi", "output": "Hello!", "id": 7}, "alpaca", HELLO),  # extra keys are ignored
    ],
)
def test_each_format_is_detected_and_normalised(record: dict, fmt: str, expected: list, tmp_path: Path) -> None:
    parsed = parse_one(record, tmp_path)
    assert isinstance(parsed, Record)
    assert parsed.format == fmt
    assert parsed.chat == expected


@pytest.mark.parametrize(
    ("line", "reason", "in_message"),
    [
        (b"\xff\xfe{}", Reason.INVALID_UTF8, "byte 0xff at byte offset 0"),
        ('{"messages": [', Reason.INVALID_JSON, "column"),
        ("[" * 100_000 + "]" * 100_000, Reason.TOO_DEEPLY_NESTED, "nested"),
        ("[1, 2]", Reason.NOT_AN_OBJECT, "got a JSON array"),
        ({"prompt": "x", "completion": "y"}, Reason.UNKNOWN_FORMAT, "keys: completion, prompt"),
        ({"messages": [{"role": "bot", "content": "x"}]}, Reason.INVALID_ROLE, "messages[0].role"),
        ({"conversations": [{"from": "bing", "value": "x"}]}, Reason.INVALID_ROLE, "conversations[0].from"),
        ({"messages": [HELLO[0], {"role": "assistant", "content": "  \n"}]}, Reason.EMPTY_CONTENT, "messages[1].content"),
        ({"instruction": "", "output": "x"}, Reason.EMPTY_CONTENT, "instruction"),
        ({"messages": [HELLO[0], {"role": "assistant", "content": 42}]}, Reason.INVALID_FIELD, "messages[1].content"),
        ({"messages": [{"role": "user"}]}, Reason.INVALID_FIELD, "messages[0].content: Field required"),
        ({"messages": "hello"}, Reason.INVALID_FIELD, "messages"),
        ({"messages": [{"role": "user", "content": "\ud800"}, HELLO[1]]}, Reason.INVALID_FIELD, "surrogate"),
        ({"messages": [HELLO[0]]}, Reason.NO_ASSISTANT_TURN, "no assistant turn"),
        ({"conversations": []}, Reason.NO_ASSISTANT_TURN, "no assistant turn"),
    ],
)
def test_each_line_rejection_names_reason_and_place(line, reason: Reason, in_message: str, tmp_path: Path) -> None:
    parsed = parse_one(line, tmp_path)
    assert isinstance(parsed, RejectedLine)
    assert parsed.reason == reason
    assert in_message in parsed.message
    assert parsed.line == 1


def test_huge_line_is_rejected_without_parsing_and_next_line_still_read(tmp_path: Path) -> None:
    huge = b'{"messages": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}'
    path = write_jsonl(tmp_path / "in.jsonl", [huge, {"messages": HELLO}])
    first, second = [parse_line(raw) for raw in read_lines(path)]
    assert isinstance(first, RejectedLine) and first.reason == Reason.LINE_TOO_LARGE
    assert f"{len(huge) + 1:,} bytes" in first.message
    assert len(first.raw) == RAW_PREVIEW_CHARS
    assert isinstance(second, Record) and second.line == 2 and second.chat == HELLO


def test_bom_crlf_and_blank_lines_keep_editor_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    body = b"\xef\xbb\xbf" + json.dumps({"messages": HELLO}).encode() + b"\r\n\r\n   \r\n" + json.dumps({"conversations": HELLO}).encode() + b"\r\n"
    path.write_bytes(body)
    parsed = [parse_line(raw) for raw in read_lines(path)]
    assert [(p.line, p.format) for p in parsed] == [(1, "openai"), (4, "conversations")]


def test_gzip_input_is_detected_by_content(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(json.dumps({"messages": HELLO}).encode() + b"\n{oops\n")
    parsed = [parse_line(raw) for raw in read_lines(path)]
    assert isinstance(parsed[0], Record) and parsed[0].chat == HELLO
    assert isinstance(parsed[1], RejectedLine) and parsed[1].line == 2 and parsed[1].reason == Reason.INVALID_JSON


def test_a_cut_off_gzip_is_refused_naming_the_last_line_read(tmp_path: Path) -> None:
    path = write_cut_gzip(tmp_path / "cut.jsonl.gz")
    read: list[int] = []
    with pytest.raises(UnreadableInput, match=r"cut\.jsonl\.gz: the gzip data is cut off or corrupt after line [\d,]+ ") as caught:
        read.extend(raw.line for raw in read_lines(path))
    assert 0 < len(read) < 2000 and f"after line {read[-1]:,} " in str(caught.value)
    assert "export or download it again" in str(caught.value)


def test_corrupt_gzip_data_is_refused(tmp_path: Path) -> None:
    whole = bytearray(gzipped_chats(2000))
    middle = len(whole) // 2
    whole[middle : middle + 64] = bytes(64)  # zeros over the deflate stream
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(bytes(whole))
    with pytest.raises(UnreadableInput, match="corrupt.jsonl.gz"):
        list(read_lines(path))
    not_gzip = tmp_path / "magic.jsonl.gz"
    not_gzip.write_bytes(b"\x1f\x8b" + b"not deflate at all" * 10)  # the magic bytes, then garbage
    with pytest.raises(UnreadableInput, match="after line 0 "):
        list(read_lines(not_gzip))


def test_rejected_raw_text_is_capped(tmp_path: Path) -> None:
    parsed = parse_one('{"messages": ' + "[" * 5 + '"' + "y" * 10_000, tmp_path)
    assert isinstance(parsed, RejectedLine)
    assert len(parsed.raw) == formats.RAW_PREVIEW_CHARS
    assert json.dumps(parsed.to_json(with_file=True))  # serialisable as a rejected.jsonl entry
