"""The prepared dataset of a run, opened once: its report, both splits as samples, and its sha256.

Each file is read once; the sha256 is taken over the bytes that are parsed, in `dataset_sha256`'s order
(train.parquet, eval.parquet, report.json, each name then content), so the manifest's dataset identity
is the same as `lorafleet.data.dataset.dataset_sha256` computes and always that of the data trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from lorafleet.data.dataset import REPORT_NAME, SCHEMA, SPLITS, DatasetError, PrepareReport, split_path
from lorafleet.train.batching import Sample, samples_from_table


@dataclass(frozen=True)
class TrainData:
    """A prepared dataset in memory."""

    folder: Path
    report: PrepareReport
    train: list[Sample]
    eval: list[Sample]
    sha256: str

    @property
    def longest_train_row(self) -> int:
        return max((len(s.input_ids) for s in self.train), default=1)


def open_prepared(folder: Path) -> TrainData:
    """Read a prepared-dataset folder once; raises DatasetError when it is not one or is malformed."""
    folder = Path(folder)
    report_path = folder / REPORT_NAME
    if not report_path.is_file():
        raise DatasetError(f"{folder} is not a prepared dataset: {REPORT_NAME} is missing (run `lorafleet prepare`)")
    digest = hashlib.sha256()
    splits: dict[str, list[Sample]] = {}
    for split in SPLITS:
        path = split_path(folder, split)
        if not path.is_file():
            raise DatasetError(f"{folder} is not a prepared dataset: {path.name} is missing")
        raw = path.read_bytes()
        digest.update(path.name.encode())
        digest.update(raw)
        splits[split] = samples_from_table(pq.read_table(pa.BufferReader(raw), schema=SCHEMA))
    raw = report_path.read_bytes()
    digest.update(REPORT_NAME.encode())
    digest.update(raw)
    try:
        report = PrepareReport.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DatasetError(f"{report_path} is malformed: {first['loc']}: {first['msg']}") from None
    return TrainData(folder, report, splits["train"], splits["eval"], digest.hexdigest())
