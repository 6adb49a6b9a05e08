"""Reading chat JSONL: plain or gzip files, a UTF-8 BOM, CRLF line endings, one record per line.

Bytes never crash the reader: a line that is too large, not UTF-8, not JSON or nested too deeply
becomes a `Rejection` carrying its 1-based line number, and the lines around it are read as usual.
A gzip file that is cut off or corrupt is another matter: what follows the damage cannot be read at all,
so the file is refused whole (`UnreadableInput`, naming the last line read) rather than trained on in part.
The format of each record is detected per line (see `validate.to_chat`).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lorafleet.data.validate import Chat, Format, Reason, Rejection, to_chat

MAX_LINE_BYTES = 10 * 2**20  # a chat line beyond this is an export bug, not a training sample
RAW_PREVIEW_CHARS = 2_000  # how much of a rejected line is copied into rejected.jsonl
_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"


class UnreadableInput(ValueError):
    """An input file that cannot be read to its end: its gzip data is cut off or corrupt."""


@dataclass(frozen=True)
class RawLine:
    """One non-blank physical line of an input file, line endings and BOM removed."""

    file: str
    line: int  # 1-based, counting blank lines too, as an editor shows it
    data: bytes  # the first MAX_LINE_BYTES bytes when `size` is larger
    size: int  # the line's full size in bytes


@dataclass(frozen=True)
class Record:
    """A line that parsed and validated: its chat in role/content form."""

    file: str
    line: int
    format: Format
    chat: Chat
    raw: str  # at most RAW_PREVIEW_CHARS characters, for rejected.jsonl if a later stage rejects it


@dataclass(frozen=True)
class RejectedLine:
    file: str
    line: int
    reason: Reason
    message: str
    raw: str  # at most RAW_PREVIEW_CHARS characters of the line

    def to_json(self, with_file: bool) -> dict:
        entry: dict = {"file": self.file} if with_file else {}
        entry.update(line=self.line, reason=self.reason.value, message=self.message, raw=self.raw)
        return entry


def read_lines(path: Path) -> Iterator[RawLine]:
    """Yield the non-blank lines of a JSONL file (gzip detected by its magic bytes), in order.

    Memory per line is bounded by MAX_LINE_BYTES: the rest of a larger line is skipped, only counted.
    Raises OSError when the file cannot be opened, UnreadableInput when its gzip data ends early or is corrupt.
    """
    with path.open("rb") as probe:
        is_gzip = probe.read(2) == _GZIP_MAGIC
    opener = gzip.open if is_gzip else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            while chunk := f.readline(MAX_LINE_BYTES + 1):
                line_no += 1
                size = len(chunk)
                if size > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
                    while rest := f.readline(1 << 20):  # skip the remainder of the oversized line
                        size += len(rest)
                        if rest.endswith(b"\n"):
                            break
                if line_no == 1 and chunk.startswith(_BOM):
                    chunk = chunk[len(_BOM) :]
                data = chunk.strip()  # JSON whitespace, so CR of CRLF too
                if data:
                    yield RawLine(str(path), line_no, data, size)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # only gzip data raises these
        raise UnreadableInput(
            f"{path}: the gzip data is cut off or corrupt after line {line_no:,} ({exc}); the file is incomplete, "
            "so nothing was prepared: export or download it again") from None


def parse_line(raw: RawLine) -> Record | RejectedLine:
    """Decode, parse and validate one line; never raises for any content of the line."""
    if raw.size > MAX_LINE_BYTES:
        return _reject(raw, Reason.LINE_TOO_LARGE, f"line is {raw.size:,} bytes; the limit is {MAX_LINE_BYTES:,}")
    try:
        text = raw.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _reject(raw, Reason.INVALID_UTF8, f"byte 0x{raw.data[exc.start]:02x} at byte offset {exc.start} is not valid UTF-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return _reject(raw, Reason.INVALID_JSON, f"not valid JSON: {exc.msg} at column {exc.colno}", text)
    except RecursionError:
        return _reject(raw, Reason.TOO_DEEPLY_NESTED, "JSON is nested too deeply to be a chat record", text)
    result = to_chat(obj)
    if isinstance(result, Rejection):
        return _reject(raw, result.reason, result.message, text)
    fmt, chat = result
    return Record(raw.file, raw.line, fmt, chat, text[:RAW_PREVIEW_CHARS])


def _reject(raw: RawLine, reason: Reason, message: str, text: str | None = None) -> RejectedLine:
    if text is None:
        text = raw.data[: RAW_PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
    return RejectedLine(raw.file, raw.line, reason, message, text[:RAW_PREVIEW_CHARS])
