"""The prepared dataset on disk: what `prepare` writes and `train` reads.

A prepared dataset is a folder with
  train.parquet, eval.parquet   one row per sample: input_ids, labels (-100 = not trained),
                                source_file, source_line (1-based), num_tokens
  report.json                   `PrepareReport`: counts, token statistics, fingerprints
  rejected.jsonl                one `{"line", "reason", "raw"}` object per rejected input line
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, ValidationError

IGNORE_INDEX = -100  # label value for tokens that carry no loss (the transformers convention)
SPLITS = ("train", "eval")
REPORT_NAME = "report.json"
REJECTED_NAME = "rejected.jsonl"

SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("source_file", pa.string()),
        ("source_line", pa.int64()),
        ("num_tokens", pa.int32()),
    ]
)


class TokenStats(BaseModel):
    """Token counts over accepted samples."""

    total: int = 0
    trained: int = 0
    max: int = 0
    p50: float = 0
    p95: float = 0


class PrepareReport(BaseModel):
    """`report.json`: what prepare read, kept, rejected and wrote, and for which model."""

    lines: int = Field(description="non-blank input lines read")
    accepted: int
    rejected: int
    duplicates: int = Field(description="exact duplicate conversations, kept once")
    truncated: int = Field(description="samples shortened by removing whole earlier turns")
    train: int
    eval: int
    tokens: TokenStats
    model: str = Field(description="the --model the data was templated for")
    model_fingerprint: str
    tokenizer_fingerprint: str
    max_seq_length: int
    seed: int
    rejections_by_reason: dict[str, int] = Field(default_factory=dict)
    length_histogram: list[tuple[int, int]] = Field(default_factory=list, description="(bucket upper bound, count)")
    formats: dict[str, int] = Field(default_factory=dict, description="accepted samples per input format")

    @property
    def error_rate(self) -> float:
        return self.rejected / self.lines if self.lines else 0.0


class DatasetError(ValueError):
    """A prepared-dataset folder that is missing or malformed."""


def split_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"{split}.parquet"


def load_report(folder: Path) -> PrepareReport:
    """Read `report.json`; raises DatasetError when the folder is not a prepared dataset."""
    path = Path(folder) / REPORT_NAME
    if not path.is_file():
        raise DatasetError(f"{folder} is not a prepared dataset: {REPORT_NAME} is missing (run `lorafleet prepare`)")
    try:
        return PrepareReport.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise DatasetError(f"{path} is malformed: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def read_split(folder: Path, split: str) -> pa.Table:
    """One split as an Arrow table with `SCHEMA`; raises DatasetError when the file is missing."""
    path = split_path(folder, split)
    if not path.is_file():
        raise DatasetError(f"{folder} is not a prepared dataset: {path.name} is missing")
    return pq.read_table(path, schema=SCHEMA)


def dataset_sha256(folder: Path) -> str:
    """sha256 over the split files and the report, in a fixed order: the dataset's identity in a manifest."""
    digest = hashlib.sha256()
    for name in [f"{s}.parquet" for s in SPLITS] + [REPORT_NAME]:
        digest.update(name.encode())
        with (Path(folder) / name).open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
