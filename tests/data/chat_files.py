"""Test inputs for prepare: JSONL files written line by line, dicts or raw bytes alike."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def chat(*turns: str, system: str | None = None) -> dict:
    """An OpenAI-format record alternating user/assistant over `turns`."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"messages": messages}


def write_jsonl(path: Path, rows: list[dict | str | bytes], newline: bytes = b"\n") -> Path:
    """Write one line per row: dicts as JSON, str as-is (UTF-8), bytes untouched."""
    encoded = [json.dumps(r).encode() if isinstance(r, dict) else r.encode() if isinstance(r, str) else r for r in rows]
    path.write_bytes(b"".join(line + newline for line in encoded))
    return path


def gzipped_chats(count: int) -> bytes:
    """``count`` distinct one-exchange chats as gzip-compressed JSONL."""
    return gzip.compress(b"".join(json.dumps(chat(f"q{i}", "a")).encode() + b"\n" for i in range(count)))


def write_cut_gzip(path: Path, count: int = 2000) -> Path:
    """The first half of ``gzipped_chats(count)``: a gzip file cut off mid-stream, its first lines intact."""
    whole = gzipped_chats(count)
    path.write_bytes(whole[: len(whole) // 2])
    return path
