"""Streaming output of `prepare`: Parquet splits written in row groups, rejected lines, and the folder swap.

Everything is written into a staging folder next to `--out`; `publish` renames it into place at the
end, so a crash never leaves a folder that looks like a complete prepared dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lorafleet.atomic import replace_dir
from lorafleet.data.dataset import REJECTED_NAME, REPORT_NAME, SCHEMA, SPLITS, split_path
from lorafleet.data.formats import RejectedLine
from lorafleet.data.template import Encoded


class OutputError(ValueError):
    """`--out` cannot be used (for example, it is a folder that is not a prepared dataset)."""


def check_out_dir(out: Path) -> None:
    """Refuse an `--out` that exists and is neither empty nor an earlier prepared dataset (we replace those)."""
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / REPORT_NAME).is_file():
            raise OutputError(f"--out {out} exists and is not a prepared dataset; choose a new or empty folder")


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial-{os.getpid()}"


class DatasetWriter:
    """Appends samples to train/eval Parquet files and rejections to rejected.jsonl, one chunk at a time."""

    def __init__(self, folder: Path, with_file_names: bool) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self._with_file_names = with_file_names
        self._parquet = {split: pq.ParquetWriter(split_path(folder, split), SCHEMA) for split in SPLITS}
        self._rejected = (folder / REJECTED_NAME).open("w", encoding="utf-8")

    def write_samples(self, split: str, samples: list[tuple[str, int, Encoded]]) -> None:
        """Write (source_file, source_line, encoded) rows as one row group of `split`."""
        if not samples:
            return
        lengths = np.fromiter((s[2].num_tokens for s in samples), dtype=np.int32, count=len(samples))
        offsets = np.zeros(len(samples) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        input_ids = np.concatenate([s[2].input_ids for s in samples])
        labels = np.concatenate([s[2].labels for s in samples])
        table = pa.Table.from_arrays(
            [
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(input_ids, pa.int32())),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels, pa.int32())),
                pa.array([s[0] for s in samples], pa.string()),
                pa.array([s[1] for s in samples], pa.int64()),
                pa.array(lengths, pa.int32()),
            ],
            schema=SCHEMA,
        )
        self._parquet[split].write_table(table)

    def write_rejections(self, rejected: list[RejectedLine]) -> None:
        for entry in rejected:
            self._rejected.write(json.dumps(entry.to_json(self._with_file_names), ensure_ascii=False) + "\n")

    def write_report(self, report_json: str) -> None:
        (self.folder / REPORT_NAME).write_text(report_json + "\n", encoding="utf-8")

    def close(self) -> None:
        for writer in self._parquet.values():
            writer.close()
        self._rejected.close()

    def drop_splits(self) -> None:
        """Remove the Parquet files, so a failed run's folder never passes for a dataset."""
        for split in SPLITS:
            split_path(self.folder, split).unlink(missing_ok=True)


def publish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to `out`, replacing an earlier prepared dataset there."""
    check_out_dir(out)
    replace_dir(staging, out)
