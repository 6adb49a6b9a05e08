"""The JSONL request log: one line per request, the input of `lorafleet ab-report`.

Prompt text is left out unless the fleet config says `log_prompts: true`: logs travel further than
the traffic they describe.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass
class RequestRecord:
    """What one request did; `version` is NAME@vN or the base model's name."""

    time: str  # ISO 8601, UTC, when the request arrived
    request_id: str
    endpoint: str  # chat.completions | completions
    alias: str
    tenant: str | None = None  # the API key's tenant ("anonymous" without keys)
    version: str | None = None
    replica: str | None = None
    status: int = 200
    latency_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    fallback: bool = False
    fallback_reason: str | None = None
    canary: bool = False
    stream: bool = False
    retries: int = 0
    error: str | None = None
    prompt: object | None = None  # messages or prompt, only with log_prompts


class RequestLog:
    """Appends records as JSON lines into a buffer that `flush` (called every second by the gateway) and
    `close` write out: a write per request would cost more than the rest of the gateway's work."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8", buffering=1 << 16)
        self._lock = threading.Lock()

    def write(self, record: RequestRecord) -> None:
        fields = {k: v for k, v in vars(record).items() if v is not None or k in ("version", "replica")}
        line = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")

    def flush(self) -> None:
        with self._lock:
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_records(path: Path) -> tuple[list[dict], list[str]]:
    """Every parseable line of a request log, and one problem per line that is not (never silently dropped)."""
    records: list[dict] = []
    problems: list[str] = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON ({exc.msg})")
                continue
            if not isinstance(value, dict):
                problems.append(f"{path}:{number}: not a JSON object")
                continue
            records.append(value)
    return records, problems
