"""The demo task, support-ticket triage: its labels, its two labelling rules and its format instructions.

A customer message goes in; the assistant answers with exactly one JSON object
`{"category": ..., "priority": ..., "reply": ...}`. The generator (tickets.py) labels every ticket
with the two pure functions below, and the same rules are written out in FORMAT_INSTRUCTIONS, which
is what the base model is given to make the comparison with the adapter fair.

Category: a ticket that raises several issues gets the category of its most urgent issue (by each
issue's base priority, before cues); between equally urgent issues, the one whose category comes
first in PRECEDENCE: account (without access nothing else can be fixed, and a compromised account
is a security risk), then billing (money), technical (a product that does not work), shipping (a
delivery), and other last. So "the app crashes, and can I get an invoice?" is technical, while
"please cancel my plan, and the camera is offline" (two medium issues) is billing.

Priority: the highest base priority among the issues raised (each kind of issue has one: high when
the customer is blocked, loses money or is at risk; low for questions, requests and feedback; medium
for the rest); an explicit urgency cue ("urgent", "ASAP", "third time") raises it one level; an
explicit no-rush cue ("no rush", "whenever you can") lowers a medium issue to low.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Category = Literal["billing", "technical", "account", "shipping", "other"]
Priority = Literal["low", "medium", "high"]
Cue = Literal["urgent", "calm"]

CATEGORIES: tuple[Category, ...] = get_args(Category)
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
PRECEDENCE: tuple[Category, ...] = ("account", "billing", "technical", "shipping", "other")


class Triage(BaseModel):
    """The answer the assistant must give: one JSON object with exactly these three fields."""

    model_config = ConfigDict(extra="forbid")

    category: Category = Field(description="which team handles the ticket")
    priority: Priority = Field(description="how soon it must be handled")
    reply: str = Field(min_length=1, description="one or two sentences to the customer")

    def to_answer(self) -> str:
        """The assistant turn as trained: compact JSON on one line, fields in a fixed order."""
        return json.dumps(self.model_dump(), ensure_ascii=False)


def winning_category(issues: Iterable[tuple[Category, Priority]]) -> Category:
    """The category of a ticket raising `issues` (category, base priority): the most urgent issue's,
    ties broken by PRECEDENCE.

    Raises ValueError for no issues or an unknown category or priority.
    """
    issues = list(issues)
    if not issues or any(c not in CATEGORIES or p not in PRIORITIES for c, p in issues):
        raise ValueError(f"issues must be (category, priority) pairs from {CATEGORIES} and {PRIORITIES}, got {issues}")
    return min(issues, key=lambda issue: (-PRIORITIES.index(issue[1]), PRECEDENCE.index(issue[0])))[0]


def ticket_priority(base_priorities: Iterable[Priority], cue: Cue | None) -> Priority:
    """The priority of a ticket whose issues have `base_priorities`, after its urgency `cue` if any.

    The highest base wins; "urgent" raises it one level (high stays high); "calm" lowers medium to
    low and leaves low and high alone (a blocked customer stays high however politely they ask).
    """
    levels = [PRIORITIES.index(p) for p in base_priorities]
    if not levels:
        raise ValueError("a ticket raises at least one issue")
    level = max(levels)
    if cue == "urgent":
        level = min(level + 1, len(PRIORITIES) - 1)
    elif cue == "calm" and PRIORITIES[level] == "medium":
        level -= 1
    return PRIORITIES[level]


FORMAT_INSTRUCTIONS = """\
You triage customer support tickets for Acme, a company that sells smart home devices, an app and subscription plans.
Read the customer's message and answer with exactly one JSON object and nothing else, in this form:
{"category": "...", "priority": "...", "reply": "..."}

category is one of:
- "account": logging in, passwords, verification codes, two-factor, locked or hacked accounts, profile details, team access, deleting an account or personal data
- "billing": charges, double or unknown charges, refunds, invoices, payments and payment methods, prices, discount codes, subscriptions and cancelling them
- "technical": the app, website, API or a device not working: crashes, errors, connection problems, outages, slowness, lost data, how to use a feature
- "shipping": deliveries, tracking, late or lost parcels, delivery addresses, damaged, wrong or missing items, returns and return labels
- "other": anything else: feedback, feature ideas, general questions about the company, complaints about the service, unclear messages, spam
If the message raises several issues, use the category of the most urgent one (see priority below); if they are equally urgent, the first of this list: account, billing, technical, shipping, other.

priority is one of:
- "high": the customer is blocked, loses money or is at risk (cannot log in, hacked, charged wrongly, service down, parcel lost)
- "medium": something is broken, late or wrong but the customer is not blocked
- "low": a question, a request, feedback or an unclear message
If the customer says it is urgent, raise the priority one level; if they say there is no rush, a medium issue becomes low.

reply is one or two friendly sentences to the customer that acknowledge the issue and say what happens next."""
