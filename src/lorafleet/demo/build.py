"""The demo's first half: triage data → prepared dataset → trained adapter, each reused when its inputs are unchanged.

    OUT/data/        the generated ticket files (train in four chat formats with broken lines, dev.jsonl)
    OUT/prepared/    `lorafleet prepare`'s dataset, its key in OUT/prepared.key
    OUT/artifacts/N  one adapter artifact per version, its key in OUT/artifacts/N.key
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from lorafleet.artifact import Manifest, load_manifest, verify_artifact
from lorafleet.config import TrainConfig
from lorafleet.data.dataset import PrepareReport, dataset_sha256, load_report
from lorafleet.data.prepare import PrepareOptions, prepare_dataset
from lorafleet.data.summary import print_summary
from lorafleet.demo.steps import can_reuse, files_key, text_key, write_stamp
from lorafleet.demo.ticket_files import TicketDataSummary, write_ticket_data


def generate_data(out: Path, seed: int, n_train: int, n_dev: int) -> TicketDataSummary:
    """Write the triage data set into `out` (same seed and sizes, same bytes: regenerating costs about a second)."""
    return write_ticket_data(out, seed, n_train, n_dev)


def train_files(data: Path, summary: TicketDataSummary) -> list[Path]:
    return [data / name for name in summary.train_files]


def prepare_cached(inputs: list[Path], out: Path, options: PrepareOptions) -> tuple[PrepareReport, bool]:
    """Prepare `inputs` into `out` unless the same inputs and options were prepared there before.

    Returns the report and whether it was reused. Raises what prepare_dataset raises.
    """
    stamp = out.with_name(out.name + ".key")
    key = files_key(inputs, options.model_dump())
    if can_reuse(stamp, key, (out / "report.json").is_file()):
        return load_report(out), True
    report = prepare_dataset(inputs, out, options)
    write_stamp(stamp, key)
    return report, False


def train_cached(data: Path, artifact: Path, config: TrainConfig) -> tuple[Manifest, bool]:
    """Train an adapter on `data` into `artifact` unless an intact one from the same data and config is there.

    Returns its manifest and whether it was reused; an artifact that does not verify is trained again.
    """
    from lorafleet.train.trainer import train_adapter  # torch: imported only when training

    stamp = artifact.with_name(artifact.name + ".key")
    key = text_key(dataset_sha256(data), config.model_dump_json())
    intact = artifact.is_dir() and (artifact / "lorafleet.json").is_file() and not verify_artifact(artifact)
    if can_reuse(stamp, key, intact):
        return load_manifest(artifact), True
    shutil.rmtree(artifact, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    manifest = train_adapter(data, artifact, config)
    problems = verify_artifact(artifact)
    if problems:
        raise RuntimeError(f"the demo's artifact {artifact} does not verify: {problems}")
    write_stamp(stamp, key)
    return manifest, False


def print_data_summary(summary: TicketDataSummary, out: Path, console: Console) -> None:
    train, dev = summary.train, summary.dev
    console.print(
        f"{train.tickets} training tickets in {', '.join(summary.train_files)} (+{summary.malformed_lines} broken lines on purpose), "
        f"{dev.tickets} held-out in {summary.dev_file}; categories {train.categories}; "
        f"{train.multi_intent} multi-issue tickets; written to {out}",
        highlight=False, markup=False,
    )


def print_prepare(report: PrepareReport, console: Console) -> None:
    print_summary(report, console)


def print_trained(name: str, manifest: Manifest, console: Console) -> None:
    m = manifest.metrics
    eval_loss = f"{m.eval_loss:.3f}" if m.eval_loss is not None else "-"
    console.print(
        f"{name}: {m.steps} steps, train loss {m.train_loss:.3f}, eval loss {eval_loss}, {m.tokens_per_s:.0f} tokens/s, verified",
        highlight=False,
    )
