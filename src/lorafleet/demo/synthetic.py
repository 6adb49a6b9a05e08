"""Synthetic customer-support conversations: the demo's sample data and the prepare benchmark's input.

Every assistant answer follows one house style (greets by topic, gives numbered steps, signs off as
"— Ada, Acme Support"), so an adapter trained on them shows a visible change from the base model.
Records are spread over the four input formats. Deterministic for a given seed.

Regenerate the shipped sample with `python -m lorafleet.demo.synthetic src/lorafleet/demo/data/support.jsonl`.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

SIGN_OFF = "— Ada, Acme Support"
SYSTEM_PROMPT = "You are Ada, the support assistant of Acme, a company that sells smart home devices."
PRODUCTS = ["thermostat", "doorbell camera", "smart plug", "light bulb", "motion sensor", "door lock", "hub", "air purifier"]
PROBLEMS = {
    "won't connect to Wi-Fi": ["Move the {p} within 5 m of the router", "Hold the reset button for 10 seconds", "Re-add it in the Acme app under Devices > Add"],
    "keeps going offline": ["Check that your router uses the 2.4 GHz band", "Update the {p} firmware in Settings > Firmware", "Give the {p} a fixed IP address in your router"],
    "shows a red light": ["Unplug the {p} for 30 seconds", "Plug it back in and wait for a blue light", "If it stays red, send us its serial number"],
    "is not responding to the app": ["Force-close the Acme app and open it again", "Check that the {p} appears under Devices", "Remove it and add it again"],
    "has a flat battery too quickly": ["Lower the reporting interval in the {p} settings", "Use lithium batteries rather than alkaline", "Check the battery level every week in the app"],
}
ASKS = ["My {p} {problem}.", "Hi, the {p} {problem}. What should I do?", "Help! Since yesterday my {p} {problem}.", "Our new {p} {problem}, any idea?"]
FOLLOW_UPS = [("Does this void my warranty?", "No. Resetting or updating the {p} never affects your 2-year warranty."),
              ("How long does the firmware update take?", "About 5 minutes. Keep the {p} powered until the light turns blue."),
              ("Can I return it instead?", "Yes, within 30 days of delivery. Start the return in the Acme app under Orders.")]
ORDER_ASKS = [("Where is my order {o}?", "Order {o} left our warehouse yesterday and should arrive within 2 working days."),
              ("Can I change the address for order {o}?", "Yes, until it ships. Open order {o} in the app and choose Edit address."),
              ("I was charged twice for order {o}.", "Sorry about that. The second charge on order {o} is a hold that disappears within 3 days.")]


def conversation(rng: random.Random) -> list[dict[str, str]]:
    """One support conversation in role/content form, 1 to 3 exchanges, sometimes with a system prompt."""
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.4 else []
    if rng.random() < 0.25:
        order = f"#{rng.randint(10000, 99999)}"
        ask, answer = rng.choice(ORDER_ASKS)
        messages += [{"role": "user", "content": ask.format(o=order)}, {"role": "assistant", "content": f"{answer.format(o=order)}\n\n{SIGN_OFF}"}]
        return messages
    product, (problem, steps) = rng.choice(PRODUCTS), rng.choice(list(PROBLEMS.items()))
    serial = f"AC-{rng.randint(100000, 999999)}"  # makes conversations distinct, as real tickets are
    numbered = "\n".join(f"{i}. {s.format(p=product)}." for i, s in enumerate(steps, 1))
    answer = f"Sorry your {product} ({serial}) {problem}. Please try:\n{numbered}\n\n{SIGN_OFF}"
    ask = f"{rng.choice(ASKS).format(p=product, problem=problem)} Serial number {serial}."
    messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
    for ask, reply in rng.sample(FOLLOW_UPS, k=rng.choice([0, 0, 1, 2])):
        messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": f"{reply.format(p=product)}\n\n{SIGN_OFF}"}]
    return messages


def as_record(messages: list[dict[str, str]], fmt: str) -> dict:
    """`messages` in one of the four input formats (alpaca only for a single exchange without system)."""
    if fmt == "sharegpt":
        names = {"system": "system", "user": "human", "assistant": "gpt"}
        return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}
    if fmt == "conversations":
        return {"conversations": messages}
    if fmt == "alpaca" and len(messages) == 2:
        return {"instruction": messages[0]["content"], "input": "", "output": messages[1]["content"]}
    return {"messages": messages}


def records(n: int, seed: int = 0) -> Iterator[dict]:
    """`n` synthetic records, formats in rotation: openai, sharegpt, conversations, alpaca."""
    rng = random.Random(seed)
    formats = ["openai", "sharegpt", "conversations", "alpaca"]
    for i in range(n):
        yield as_record(conversation(rng), formats[i % 4])


# Deliberately broken lines for the demo: each shows one rejection reason in rejected.jsonl.
BAD_LINES: list[bytes] = [
    b'{"messages": [{"role": "user", "content": "My hub is broken"}, {"role": "assistant", "content": "Try',
    json.dumps({"messages": [{"role": "user", "content": "Is anyone there?"}]}).encode(),
    json.dumps({"messages": [{"role": "customer", "content": "Hello?"}, {"role": "assistant", "content": "Hi!"}]}).encode(),
    json.dumps({"conversations": [{"from": "human", "value": "Refund please"}, {"from": "gpt", "value": "   "}]}).encode(),
    json.dumps({"prompt": "Reset my lock", "completion": "Hold the button."}).encode(),
    b'{"messages": [{"role": "user", "content": "caf\xe9 latte machine"}, {"role": "assistant", "content": "We do not sell that."}]}',
]


def write_sample(path: Path, n: int = 300, seed: int = 0) -> None:
    """Write the demo sample: `n` good records, a few exact duplicates, and BAD_LINES spread through it."""
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in records(n, seed)]
    lines += [lines[10], lines[77]]  # exact duplicates: counted and kept once
    rng = random.Random(seed)
    for bad in BAD_LINES:
        lines.insert(rng.randint(1, len(lines) - 1), bad)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


if __name__ == "__main__":
    write_sample(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data" / "support.jsonl")
