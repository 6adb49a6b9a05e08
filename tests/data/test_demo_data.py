"""The shipped demo sample: reproducible from its generator, and it passes prepare's default error threshold."""

from __future__ import annotations

from pathlib import Path

import lorafleet.demo
from lorafleet.data.prepare import PrepareOptions, prepare_dataset
from lorafleet.demo.synthetic import BAD_LINES, write_sample

SHIPPED = Path(lorafleet.demo.__file__).parent / "data" / "support.jsonl"


def test_shipped_sample_is_what_the_generator_writes(tmp_path: Path) -> None:
    write_sample(tmp_path / "support.jsonl")
    assert (tmp_path / "support.jsonl").read_bytes() == SHIPPED.read_bytes()


def test_shipped_sample_prepares_under_the_default_threshold(tiny_model: Path, tmp_path: Path) -> None:
    report = prepare_dataset([SHIPPED], tmp_path / "out", PrepareOptions(model=str(tiny_model)))
    assert report.rejected == len(BAD_LINES) and len(report.rejections_by_reason) == len(BAD_LINES)
    assert report.accepted == 300 and report.duplicates == 2
    assert set(report.formats) == {"openai", "sharegpt", "conversations", "alpaca"}
    assert report.error_rate < 0.05
