"""`lorafleet demo`: the whole lifecycle on the embedded model, in a few minutes on a CPU.

prepare the shipped support chats → train two adapter versions → verify them → push both to a
registry → canary alias (90/10) → promote → rollback → answer one held-out question with the base
model and with the promoted adapter loaded from the registry's store.

Everything is written under one folder (default `demo-output/`), the registry included, so the
demo never touches the user's own `LORAFLEET_HOME`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lorafleet.config import TrainConfig, load_train_config
from lorafleet.data.dataset import read_split
from lorafleet.data.prepare import PrepareOptions, prepare_dataset
from lorafleet.models import EMBEDDED_DEFAULT, load_tokenizer, resolve_model
from lorafleet.artifact import Manifest, verify_artifact

ALIAS = "support"
FALLBACK_PROMPT = "You are Acme's support assistant. Answer briefly and politely."
MAX_SEQ_LENGTH = 512


@dataclass(frozen=True)
class TrainedVersion:
    """One adapter the demo trained and pushed."""

    ref: str
    artifact: Path
    manifest: Manifest


def demo_data() -> Path:
    """The shipped sample: 300 synthetic support chats in four formats, with a few bad lines."""
    return Path(str(resources.files("lorafleet.demo") / "data" / "support.jsonl"))


def run_demo(out: Path, config: Path, console: Console) -> list[TrainedVersion]:
    """Run the quickstart into `out` (replaced if it exists) with the train config file `config`.

    Returns the versions it pushed; raises whatever the library raises for bad input.
    """
    out = Path(out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    os.environ["LORAFLEET_HOME"] = str(out / "home")  # the demo's own registry and store

    console.rule("1/5 base model")
    ref = resolve_model(EMBEDDED_DEFAULT)
    console.print(f"{EMBEDDED_DEFAULT} ready at {ref.path}", highlight=False)

    console.rule("2/5 prepare")
    data = out / "prepared"
    report = prepare_dataset([demo_data()], data, PrepareOptions(max_seq_length=MAX_SEQ_LENGTH))
    console.print(
        f"{report.lines} lines: {report.accepted} accepted, {report.rejected} rejected "
        f"(see {data / 'rejected.jsonl'}), {report.duplicates} duplicates; train {report.train}, eval {report.eval}",
        highlight=False,
    )

    console.rule("3/5 train two versions")
    base_config = load_train_config(config)
    versions = [
        train_version(data, out / "artifacts" / "support-a", base_config, console),
        train_version(data, out / "artifacts" / "support-b", base_config.model_copy(update={"seed": 1, "lr": 1e-3}), console),
    ]

    console.rule("4/5 registry: push, canary, promote, rollback")
    versions = push_and_route(versions, console)

    console.rule("5/5 answer a held-out question")
    compare_answers(data, ref.path, versions[1], console)
    print_results(versions, console)
    return versions


def train_version(data: Path, artifact: Path, config: TrainConfig, console: Console) -> TrainedVersion:
    """Train one adapter and verify the artifact against its manifest."""
    from lorafleet.train.trainer import train_adapter

    manifest = train_adapter(data, artifact, config)
    problems = verify_artifact(artifact)
    if problems:
        raise RuntimeError(f"the demo's artifact {artifact} does not verify: {problems}")
    console.print(
        f"{artifact.name}: {manifest.metrics.steps} steps, train loss {manifest.metrics.train_loss:.3f}, "
        f"eval loss {manifest.metrics.eval_loss:.3f}, verified ({len(manifest.files)} files)",
        highlight=False,
    )
    return TrainedVersion(ref="", artifact=artifact, manifest=manifest)


def push_and_route(versions: list[TrainedVersion], console: Console) -> list[TrainedVersion]:
    """Push each artifact as the next version of `support`, then canary, promote and roll back."""
    from lorafleet.registry import service
    from lorafleet.registry.push import init_base, push

    init_base(EMBEDDED_DEFAULT)
    pushed = [TrainedVersion(push(v.artifact, ALIAS).ref, v.artifact, v.manifest) for v in versions]
    first, second = pushed[0].ref, pushed[1].ref
    console.print(f"pushed {first} and {second}", highlight=False)
    steps = [
        (f"alias set {ALIAS} {first}=90 {second}=10", lambda: service.set_alias(ALIAS, [f"{first}=90", f"{second}=10"], FALLBACK_PROMPT)),
        (f"promote {ALIAS} {second}", lambda: service.promote(ALIAS, second)),
        (f"rollback {ALIAS}", lambda: service.rollback(ALIAS)),
        (f"promote {ALIAS} {second}", lambda: service.promote(ALIAS, second)),
    ]
    for label, action in steps:
        revision = action()
        routing = ", ".join(f"{r.ref}={r.weight}" for r in revision.routes)
        console.print(f"{label:<40} → revision {revision.revision}: {routing}", highlight=False)
    return pushed


def compare_answers(data: Path, base_path: Path, promoted: TrainedVersion, console: Console) -> None:
    """Greedy answers to the first eval question from the base model and from the promoted adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorafleet.registry import service

    tokenizer = load_tokenizer(base_path)
    question = _first_eval_prompt(data)
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    stored = Path(service.show(promoted.ref).content_path)
    with torch.no_grad():
        base_answer = _generate(model, tokenizer, prompt)
        adapted = PeftModel.from_pretrained(model, stored)
        adapter_answer = _generate(adapted, tokenizer, prompt)
    console.print(f"[bold]question[/]: {question[-1]['content']}", highlight=False)
    console.print(f"[bold]base model[/]: {base_answer}", highlight=False)
    console.print(f"[bold]{promoted.ref}[/] (from the registry store): {adapter_answer}", highlight=False)


def _first_eval_prompt(data: Path) -> list[dict[str, str]]:
    """The first eval sample's conversation up to its first assistant turn, re-read from the source line."""
    from lorafleet.data.formats import Record, parse_line, read_lines

    rows = read_split(data, "eval").slice(0, 1).to_pylist() or read_split(data, "train").slice(0, 1).to_pylist()
    line = rows[0]["source_line"]
    raw = next(r for r in read_lines(demo_data()) if r.line == line)
    record = parse_line(raw)
    assert isinstance(record, Record), f"line {line} was accepted by prepare, so it parses"
    first_answer = next(i for i, m in enumerate(record.chat) if m["role"] == "assistant")
    return record.chat[:first_answer]


def _generate(model, tokenizer, prompt: dict, max_new_tokens: int = 64) -> str:
    output = model.generate(**prompt, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def print_results(versions: list[TrainedVersion], console: Console) -> None:
    table = Table(title=f"demo results (alias {ALIAS!r})")
    for column in ("version", "steps", "train loss", "eval loss", "tokens/s", "artifact"):
        table.add_column(column)
    for v in versions:
        m = v.manifest.metrics
        eval_loss = f"{m.eval_loss:.3f}" if m.eval_loss is not None else "-"
        table.add_row(v.ref, str(m.steps), f"{m.train_loss:.3f}", eval_loss, f"{m.tokens_per_s:.0f}", os.path.relpath(v.artifact))
    console.print(table)
