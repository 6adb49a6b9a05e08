"""The support-ticket triage generator: reproducible tickets, each labelled by the rules in triage.py.

A ticket is composed from one intent (ticket_intents.yaml: a kind of issue, its category, base
priority, asks and replies), sometimes a second intent of another category that it outranks (a
multi-intent ticket, labelled by triage.winning_category), context sentences that carry no issue,
an optional urgency or no-rush cue, and a style (terse, chat or email) with its share of typos,
casual spelling and lost capitals (ticket_noise.py). Slots such as {device} or {order} are filled
from ticket_phrases.yaml or generated.

Categories are balanced: each block of five tickets holds every category once. Train and dev use
the same intents; a dev ticket is a fresh composition, and one whose text (case and spacing aside)
equals a training ticket's is drawn again, so no dev ticket was seen in training. Wording that no
template produced is measured by the hand-written tickets (data/tickets_handwritten.jsonl).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from lorafleet.demo.ticket_noise import apply_noise
from lorafleet.demo.triage import (
    CATEGORIES, Category, Cue, Priority, Triage, ticket_priority, winning_category,
)

Split = Literal["train", "dev"]
Style = Literal["terse", "chat", "email"]
# Share of tickets (whose first issue outranks some intent of another category) that raise a second issue.
# Training sees more of them than dev: the rule that picks their category is the hardest thing to learn.
MULTI_INTENT_SHARE: dict[Split, float] = {"train": 0.25, "dev": 0.15}
STYLE_WEIGHTS: dict[Style, float] = {"terse": 0.25, "chat": 0.4, "email": 0.35}
CUE_WEIGHTS: dict[Cue | None, float] = {"urgent": 0.18, "calm": 0.12, None: 0.7}
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Intent:
    """One kind of issue: where it goes, how urgent it is by itself, how customers ask, how we reply."""

    name: str
    category: Category
    priority: Priority
    asks: tuple[str, ...]
    replies: tuple[str, ...]


@dataclass(frozen=True)
class Phrasebook:
    """The words around a ticket's asks (ticket_phrases.yaml)."""

    slots: dict[str, tuple[str, ...]]
    openers: tuple[str, ...]
    chat_openers: tuple[str, ...]
    context: dict[str, tuple[str, ...]]
    urgent: tuple[str, ...]
    urgent_prefixes: tuple[str, ...]
    calm: tuple[str, ...]
    closers: tuple[str, ...]
    connectors: tuple[str, ...]
    also_replies: tuple[str, ...]
    teams: dict[str, str]
    system_prompts: tuple[str, ...]


@dataclass(frozen=True)
class Ticket:
    """A generated ticket, its label, and how it was made (kept in the dev file for error analysis)."""

    text: str
    triage: Triage
    intents: tuple[str, ...]
    cue: Cue | None
    style: Style


def _data_file(name: str) -> Path:
    return Path(str(resources.files("lorafleet.demo") / "data" / name))


def load_intents(path: Path | None = None) -> dict[Category, list[Intent]]:
    """The intents by category, from `path` (default: the shipped ticket_intents.yaml)."""
    raw = yaml.safe_load((path or _data_file("ticket_intents.yaml")).read_text(encoding="utf-8"))
    if set(raw) != set(CATEGORIES):
        raise ValueError(f"ticket intents must cover exactly the categories {CATEGORIES}, got {sorted(raw)}")
    return {
        category: [
            Intent(name, category, spec["priority"], tuple(spec["asks"]), tuple(spec["replies"]))
            for name, spec in raw[category].items()
        ]
        for category in CATEGORIES
    }


def load_phrasebook(path: Path | None = None) -> Phrasebook:
    """The phrasebook from `path` (default: the shipped ticket_phrases.yaml)."""
    raw = yaml.safe_load((path or _data_file("ticket_phrases.yaml")).read_text(encoding="utf-8"))
    return Phrasebook(
        slots={k: tuple(map(str, v)) for k, v in raw["slots"].items()},
        openers=tuple(raw["openers"]), chat_openers=tuple(raw["chat_openers"]),
        context={k: tuple(v) for k, v in raw["context"].items()},
        urgent=tuple(raw["urgent"]["sentences"]), urgent_prefixes=tuple(raw["urgent"]["prefixes"]),
        calm=tuple(raw["calm"]), closers=tuple(raw["closers"]), connectors=tuple(raw["connectors"]),
        also_replies=tuple(raw["also_replies"]), teams=dict(raw["teams"]), system_prompts=tuple(raw["system_prompts"]),
    )


def fill_slots(template: str, rng: random.Random, book: Phrasebook) -> str:
    """`template` with every {slot} replaced by a filler; unknown slots raise KeyError."""
    return _SLOT.sub(lambda m: slot_value(m.group(1), rng, book), template)


def slot_value(slot: str, rng: random.Random, book: Phrasebook) -> str:
    """One value for `slot`: generated identifiers and amounts, or a choice from the phrasebook."""
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    if slot == "order":
        return rng.choice([f"#{digits(5)}", digits(6), f"AC-{digits(6)}", f"ORD-{digits(4)}-{digits(3)}"])
    if slot in ("amount", "amount2"):
        value = rng.choice([9, 12, 19, 24, 29, 49, 59, 79, 99, 129, 249])
        return rng.choice([f"${value}.99", f"€{value}", f"£{value}.00", f"{value} dollars", f"{value} EUR", f"${value}"])
    if slot == "card4":
        return digits(4)
    if slot == "tracking":
        return rng.choice([f"1Z{digits(10)}", f"JD{digits(12)}", f"TRK-{digits(8)}"])
    if slot in ("email", "username"):
        name = rng.choice(book.slots["name"]).split()[0].lower().rstrip(".")
        return f"{name}{digits(2)}@{rng.choice(['gmail.com', 'outlook.com', 'example.org'])}" if slot == "email" else f"{name}_{digits(3)}"
    if slot == "years":
        return str(rng.randint(2, 12))
    if slot == "product" or slot == "product2":
        return rng.choice(book.slots["device"])
    return rng.choice(book.slots[slot])


def make_ticket(
    rng: random.Random, category: Category, intents: dict[Category, list[Intent]], book: Phrasebook, split: Split
) -> Ticket:
    """One ticket whose winning category is `category` (`split` sets the share of multi-issue tickets)."""
    primary = rng.choice(intents[category])
    chosen = [primary]
    outranked = [i for c in CATEGORIES if c != category for i in intents[c] if _wins(primary, i)]
    if outranked and rng.random() < MULTI_INTENT_SHARE[split]:
        chosen.append(rng.choice(outranked))
    cue: Cue | None = rng.choices(list(CUE_WEIGHTS), weights=list(CUE_WEIGHTS.values()))[0]
    style: Style = rng.choices(list(STYLE_WEIGHTS), weights=list(STYLE_WEIGHTS.values()))[0]
    asks = [fill_slots(rng.choice(i.asks), rng, book) for i in chosen]
    if len(asks) == 2 and rng.random() < 0.5:
        asks.reverse()  # the winning issue is not always mentioned first
    core = asks[0] if len(asks) == 1 else f"{_sentence(asks[0])} {_join(rng.choice(book.connectors), asks[1])}"
    text = compose(core, category, cue, style, rng, book)
    triage = Triage(
        category=winning_category((i.category, i.priority) for i in chosen),
        priority=ticket_priority((i.priority for i in chosen), cue),
        reply=compose_reply(chosen, rng, book),
    )
    return Ticket(text, triage, tuple(i.name for i in chosen), cue, style)


def compose(core: str, category: Category, cue: Cue | None, style: Style, rng: random.Random, book: Phrasebook) -> str:
    """The ticket text around `core`: greeting, context, the cue, sign-off and noise as `style` has them."""
    before: list[str] = []
    after: list[str] = []
    prefix = ""
    if cue == "urgent":
        if rng.random() < 0.3:
            prefix = rng.choice(book.urgent_prefixes)
        else:
            (before if rng.random() < 0.3 else after).append(rng.choice(book.urgent))
    elif cue == "calm":
        after.append(rng.choice(book.calm))
    contexts = book.context["any"] + book.context.get(category, ())
    if style == "terse":
        body = " ".join([_sentence(core), *after]) if after else core
        return apply_noise(prefix + " ".join([*before, body]), rng, level=rng.uniform(0.4, 1.0))
    n_context = rng.choice([0, 0, 1]) if style == "chat" else rng.choice([0, 1, 1, 2])
    context = [fill_slots(c, rng, book) for c in rng.sample(contexts, k=n_context)]
    sentences = [*context, *before, _sentence(core), *after]
    if style == "chat":
        opener = [rng.choice(book.chat_openers)] if rng.random() < 0.4 else []
        return apply_noise(prefix + " ".join(opener + sentences), rng, level=rng.uniform(0.15, 0.7))
    body = apply_noise(" ".join(sentences), rng, level=rng.choice([0.0, 0.0, 0.1, 0.25]))
    parts = [rng.choice(book.openers)] if rng.random() < 0.75 else []
    parts.append(prefix + body)
    if rng.random() < 0.7:
        parts.append(fill_slots(rng.choice(book.closers), rng, book))
    return "\n\n".join(parts) if rng.random() < 0.6 else " ".join(p.replace("\n", " ") for p in parts)


def compose_reply(chosen: list[Intent], rng: random.Random, book: Phrasebook) -> str:
    """The winning intent's reply, plus a sentence saying the other issue was passed on."""
    winner = next(i for i in chosen if _wins(i, *[o for o in chosen if o is not i]))
    reply = rng.choice(winner.replies)
    for other in chosen:
        if other is not winner:
            reply += " " + rng.choice(book.also_replies).format(team=book.teams[other.category])
    return reply


def _wins(intent: Intent, *others: Intent) -> bool:
    """Whether a ticket raising `intent` and `others` (all of other categories) takes `intent`'s category."""
    return winning_category((i.category, i.priority) for i in (intent, *others)) == intent.category


def _sentence(text: str) -> str:
    """`text` ending in punctuation, so another sentence can follow it."""
    return text if text[-1:] in ".?!" else text + "."


def _join(connector: str, ask: str) -> str:
    first = ask.split(" ", 1)[0]
    keep = first in {"I", "I'm", "I've", "I'd", "I'll"} or first.isupper() or connector.endswith(": ")
    return connector + (ask if keep else ask[:1].lower() + ask[1:])


def normalized(text: str) -> str:
    """`text` in lower case with runs of whitespace made one space: how duplicates are recognised."""
    return " ".join(text.lower().split())


def generate(n: int, seed: int, split: Split, exclude: frozenset[str] = frozenset()) -> list[Ticket]:
    """`n` tickets for `split`, categories balanced (counts differ by at most one), none whose normalized
    text is in `exclude`; the same arguments give the same tickets."""
    rng = random.Random(f"lorafleet-tickets-{seed}-{split}")
    intents, book = load_intents(), load_phrasebook()
    tickets: list[Ticket] = []
    while len(tickets) < n:
        for category in rng.sample(CATEGORIES, k=len(CATEGORIES)):  # every category once per block
            ticket = make_ticket(rng, category, intents, book, split)
            while normalized(ticket.text) in exclude:
                ticket = make_ticket(rng, category, intents, book, split)
            tickets.append(ticket)
    return tickets[:n]
