"""The triage data set on disk: two train files in four chat formats with a few broken lines, and a dev file.

    OUT/train-openai.jsonl     OpenAI `messages` and role/content `conversations` records, alternating
    OUT/train-sharegpt.jsonl   ShareGPT records, and Alpaca records for single-turn tickets without a system prompt
    OUT/dev.jsonl              held-out tickets for `lorafleet eval` (none equal to a training ticket): the user
                               message, `expected` category and priority, `required` reply, how it was made (`meta`)
    OUT/format_instructions.txt  the instructions the base model is given (`--system-prompt @file`)
    OUT/summary.json           seed, counts and label distribution

System prompts: four in five training conversations carry none (the chat template then adds the
model's own default), one in five a short generic prompt such as "Triage the customer's ticket.".
The adapter learns the task from the ticket alone, so it needs no instructions (fine-tuning replaces
the prompt), and a short system prompt, such as one a gateway adds, does not throw it off. The long
format instructions are left out of training: they would add about 350 tokens to every sample that
carries them, and CPU training time is what the demo has least of. Dev lines carry no system prompt;
`lorafleet eval --system-prompt @format_instructions.txt` gives the base model its instructions.

    python -m lorafleet.demo.ticket_files --out DIR [--seed N] [--train 1000] [--dev 200]
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import typer
from pydantic import BaseModel, Field

from lorafleet.demo.synthetic import as_record
from lorafleet.demo.tickets import Ticket, generate, load_phrasebook, normalized
from lorafleet.demo.triage import FORMAT_INSTRUCTIONS

SYSTEM_SHARES = {"none": 0.8, "short": 0.2}

# Deliberately broken lines, one per rejection reason, so prepare's reject report shows something.
BAD_LINES: list[bytes] = [
    b'{"messages": [{"role": "user", "content": "I was charged twice"}, {"role": "assistant", "content": "{\\"categ',
    json.dumps({"messages": [{"role": "user", "content": "Where is my parcel?"}]}).encode(),
    json.dumps({"messages": [{"role": "customer", "content": "login broken"}, {"role": "assistant", "content": "{}"}]}).encode(),
    json.dumps({"conversations": [{"from": "human", "value": "refund pls"}, {"from": "gpt", "value": "  "}]}).encode(),
    json.dumps({"ticket": "app crashes", "label": "technical"}).encode(),
    b'{"messages": [{"role": "user", "content": "caf\xe9 order missing"}, {"role": "assistant", "content": "{}"}]}',
]


class SplitSummary(BaseModel):
    """Label counts of one split."""

    tickets: int
    categories: dict[str, int]
    priorities: dict[str, int]
    multi_intent: int = Field(description="tickets raising two issues")
    cues: dict[str, int] = Field(description="urgent / calm / none")


class TicketDataSummary(BaseModel):
    """summary.json: how the data set was made and what it holds."""

    seed: int
    train_files: list[str]
    dev_file: str
    malformed_lines: int = Field(description="broken lines mixed into the train files on purpose")
    train: SplitSummary
    dev: SplitSummary


def summarize(tickets: list[Ticket]) -> SplitSummary:
    return SplitSummary(
        tickets=len(tickets),
        categories=dict(sorted(Counter(t.triage.category for t in tickets).items())),
        priorities=dict(sorted(Counter(t.triage.priority for t in tickets).items())),
        multi_intent=sum(len(t.intents) > 1 for t in tickets),
        cues=dict(sorted(Counter(t.cue or "none" for t in tickets).items())),
    )


def training_messages(ticket: Ticket, rng: random.Random, system_prompts: tuple[str, ...]) -> list[dict[str, str]]:
    """The ticket as a training conversation, with a system prompt drawn by SYSTEM_SHARES."""
    kind = rng.choices(list(SYSTEM_SHARES), weights=list(SYSTEM_SHARES.values()))[0]
    system = rng.choice(system_prompts) if kind == "short" else None
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": ticket.text}, {"role": "assistant", "content": ticket.triage.to_answer()}]


def dev_record(ticket: Ticket) -> dict:
    """A dev line: the ticket as a one-message chat, the labels to compare exactly, and how it was made."""
    return {
        "messages": [{"role": "user", "content": ticket.text}],
        "expected": {"category": ticket.triage.category, "priority": ticket.triage.priority},
        "required": ["reply"],
        "meta": {"intents": list(ticket.intents), "cue": ticket.cue, "style": ticket.style},
    }


def write_ticket_data(out: Path, seed: int = 0, n_train: int = 1000, n_dev: int = 200) -> TicketDataSummary:
    """Write the triage data set into `out` (created; files there with the same names are replaced)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = generate(n_train, seed, "train")
    dev = generate(n_dev, seed, "dev", exclude=frozenset(normalized(t.text) for t in train))
    rng = random.Random(f"lorafleet-ticket-files-{seed}")
    prompts = load_phrasebook().system_prompts
    files: dict[str, list[bytes]] = {"train-openai.jsonl": [], "train-sharegpt.jsonl": []}
    for i, ticket in enumerate(train):
        messages = training_messages(ticket, rng, prompts)
        name, fmt = [("train-openai.jsonl", "openai"), ("train-sharegpt.jsonl", "sharegpt"),
                     ("train-openai.jsonl", "conversations"), ("train-sharegpt.jsonl", "alpaca")][i % 4]
        if fmt == "alpaca" and len(messages) != 2:
            fmt = "sharegpt"  # Alpaca has no system prompt
        files[name].append(json.dumps(as_record(messages, fmt), ensure_ascii=False).encode())
    for i, bad in enumerate(BAD_LINES):
        lines = files[sorted(files)[i % 2]]
        lines.insert(rng.randint(1, len(lines) - 1), bad)
    for name, lines in files.items():
        (out / name).write_bytes(b"".join(line + b"\n" for line in lines))
    (out / "dev.jsonl").write_text("".join(json.dumps(dev_record(t), ensure_ascii=False) + "\n" for t in dev), encoding="utf-8")
    (out / "format_instructions.txt").write_text(FORMAT_INSTRUCTIONS + "\n", encoding="utf-8")
    summary = TicketDataSummary(
        seed=seed, train_files=sorted(files), dev_file="dev.jsonl", malformed_lines=len(BAD_LINES),
        train=summarize(train), dev=summarize(dev),
    )
    (out / "summary.json").write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return summary


def main(
    out: Path = typer.Option(..., "--out", help="Folder to write the data set into."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same files."),
    n_train: int = typer.Option(1000, "--train", min=1, help="Training conversations (before the malformed lines)."),
    n_dev: int = typer.Option(200, "--dev", min=1, help="Held-out tickets for `lorafleet eval`."),
) -> None:
    """Generate the support-ticket triage data set."""
    summary = write_ticket_data(out, seed, n_train, n_dev)
    print(summary.model_dump_json(indent=2))


if __name__ == "__main__":
    typer.run(main)
