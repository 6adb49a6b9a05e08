"""A run opens its prepared dataset once: the samples and the sha256 come from the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.data.dataset import DatasetError, dataset_sha256
from lorafleet.train.batching import load_samples
from lorafleet.train.data import open_prepared


def test_one_read_gives_the_splits_and_the_dataset_identity(tiny_data: Path):
    data = open_prepared(tiny_data)
    assert data.sha256 == dataset_sha256(tiny_data)  # the manifest's identity is unchanged
    assert data.train == load_samples(tiny_data, "train") and data.eval == load_samples(tiny_data, "eval")
    assert (data.report.train, data.report.eval) == (16, 4)
    assert data.longest_train_row == max(len(s.input_ids) for s in data.train)


def test_missing_or_malformed_files_are_named(tiny_data: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="report.json is missing"):
        open_prepared(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "report.json").write_text((tiny_data / "report.json").read_text())
    with pytest.raises(DatasetError, match="train.parquet is missing"):
        open_prepared(broken)
    for split in ("train", "eval"):
        (broken / f"{split}.parquet").write_bytes((tiny_data / f"{split}.parquet").read_bytes())
    (broken / "report.json").write_text('{"lines": "many"}')
    with pytest.raises(DatasetError, match="report.json is malformed"):
        open_prepared(broken)
