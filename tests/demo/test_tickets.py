"""The triage task's rules, and its generator: determinism, label balance, a dev split unseen in training, files prepare and eval read."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from lorafleet.data.prepare import PrepareOptions, prepare_dataset
from lorafleet.demo.ticket_files import BAD_LINES, write_ticket_data
from lorafleet.demo.ticket_noise import add_typos, apply_noise, typo
from lorafleet.demo.tickets import fill_slots, generate, load_intents, load_phrasebook, normalized
from lorafleet.demo.triage import CATEGORIES, FORMAT_INSTRUCTIONS, PRECEDENCE, PRIORITIES, Triage, ticket_priority, winning_category
from lorafleet.eval.cases import load_cases
from lorafleet.eval.scoring import score_answer


@pytest.mark.parametrize(
    ("issues", "winner"),
    [
        ([("billing", "low")], "billing"),
        ([("other", "medium")], "other"),
        ([("technical", "medium"), ("billing", "low")], "technical"),  # the more urgent issue wins
        ([("shipping", "high"), ("account", "medium")], "shipping"),
        ([("other", "medium"), ("shipping", "low")], "other"),
        ([("technical", "medium"), ("billing", "medium")], "billing"),  # a tie goes by precedence
        ([("shipping", "high"), ("account", "high")], "account"),
        ([("other", "low"), ("shipping", "low")], "shipping"),
        ([("other", "low"), ("technical", "low"), ("billing", "low"), ("shipping", "low"), ("account", "low")], "account"),
    ],
)
def test_winning_category_is_the_most_urgent_then_by_precedence(issues: list, winner: str) -> None:
    assert winning_category(issues) == winner


@pytest.mark.parametrize("issues", [[], [("refunds", "low")], [("billing", "urgent")]])
def test_winning_category_refuses_unknown_or_empty(issues: list) -> None:
    with pytest.raises(ValueError, match="must be"):
        winning_category(issues)


@pytest.mark.parametrize(
    ("bases", "cue", "priority"),
    [
        (["low"], None, "low"), (["medium"], None, "medium"), (["high"], None, "high"),
        (["low"], "urgent", "medium"), (["medium"], "urgent", "high"), (["high"], "urgent", "high"),
        (["low"], "calm", "low"), (["medium"], "calm", "low"), (["high"], "calm", "high"),
        (["low", "high"], None, "high"), (["low", "medium"], "calm", "low"), (["low", "medium"], "urgent", "high"),
    ],
)
def test_ticket_priority(bases: list, cue: str | None, priority: str) -> None:
    assert ticket_priority(bases, cue) == priority


def test_format_instructions_state_both_rules() -> None:
    assert ", ".join(PRECEDENCE) in FORMAT_INSTRUCTIONS
    for label in (*CATEGORIES, *PRIORITIES):
        assert f'"{label}"' in FORMAT_INSTRUCTIONS


def test_every_intent_is_rich_enough_and_its_slots_fill() -> None:
    intents, book = load_intents(), load_phrasebook()
    rng = random.Random(0)
    assert sum(len(v) for v in intents.values()) >= 35
    for category, group in intents.items():
        assert len(group) >= 6, category
        for intent in group:
            assert len(intent.asks) >= 12 and len(intent.replies) >= 3, intent.name
            assert len(set(intent.asks)) == len(intent.asks), intent.name
            for text in (*intent.asks, *intent.replies):
                assert "{" not in fill_slots(text, rng, book), text
            assert all("{" not in reply for reply in intent.replies)  # replies never invent ticket details


def test_generation_is_deterministic_per_seed_and_split() -> None:
    first = generate(60, seed=3, split="train")
    assert first == generate(60, seed=3, split="train")
    assert [t.text for t in first] != [t.text for t in generate(60, seed=4, split="train")]
    assert [t.text for t in first] != [t.text for t in generate(60, seed=3, split="dev")]


def test_no_dev_ticket_was_seen_in_training(tmp_path: Path) -> None:
    write_ticket_data(tmp_path, seed=2, n_train=600, n_dev=300)
    train_texts = set()
    for name in ("train-openai.jsonl", "train-sharegpt.jsonl"):
        for line in (tmp_path / name).read_bytes().splitlines():
            if line not in BAD_LINES:
                record = json.loads(line)
                turns = record.get("messages") or record.get("conversations") or [{"content": record.get("instruction")}]
                train_texts |= {normalized(t.get("content") or t.get("value") or "") for t in turns}
    dev_texts = [normalized(json.loads(line)["messages"][0]["content"]) for line in (tmp_path / "dev.jsonl").read_text().splitlines()]
    assert len(dev_texts) == 300 and not set(dev_texts) & train_texts
    assert generate(300, seed=2, split="dev") != generate(300, seed=2, split="dev", exclude=frozenset(train_texts))  # some were redrawn


def test_labels_are_balanced_and_varied() -> None:
    tickets = generate(1000, seed=0, split="train")
    categories = Counter(t.triage.category for t in tickets)
    assert set(categories.values()) == {200}
    priorities = Counter(t.triage.priority for t in tickets)
    assert all(0.2 < priorities[p] / 1000 < 0.45 for p in PRIORITIES), priorities
    assert 0.15 < sum(len(t.intents) > 1 for t in tickets) / 1000 < 0.3  # dev has fewer: see MULTI_INTENT_SHARE
    assert 0.07 < sum(len(t.intents) > 1 for t in generate(400, seed=0, split="dev")) / 400 < 0.2
    assert {t.cue for t in tickets} == {"urgent", "calm", None} and {t.style for t in tickets} == {"terse", "chat", "email"}
    assert len({t.text for t in tickets}) > 950  # near-unique texts, not a handful of templates
    lengths = sorted(len(t.text.split()) for t in tickets)
    assert lengths[0] <= 3 and lengths[-1] >= 40


def test_multi_intent_tickets_take_the_winning_category() -> None:
    intents = {i.name: i for group in load_intents().values() for i in group}
    multi = [t for t in generate(300, seed=1, split="train") if len(t.intents) > 1]
    assert len(multi) > 20
    for ticket in multi:
        issues = [(intents[name].category, intents[name].priority) for name in ticket.intents]
        assert ticket.triage.category == winning_category(issues) == issues[0][0]
        assert issues[0][0] != issues[1][0]
        assert "team" in ticket.triage.reply  # the other issue is said to be passed on


def test_noise_keeps_first_letters_and_level_zero_is_identity() -> None:
    rng = random.Random(0)
    for word in ["refund", "password", "delivery", "crash"]:
        slipped = typo(word, rng)
        assert slipped != word or len(set(word)) < len(word)
        assert slipped[0] == word[0] and abs(len(slipped) - len(word)) <= 1
    assert apply_noise("My Order Is Late.", rng, level=0) == "My Order Is Late."
    assert add_typos("I was charged twice for order", rng, rate=1.0) != "I was charged twice for order"


def test_written_files_prepare_and_evaluate(tiny_model: Path, tmp_path: Path) -> None:
    summary = write_ticket_data(tmp_path / "a", seed=5, n_train=120, n_dev=30)
    write_ticket_data(tmp_path / "b", seed=5, n_train=120, n_dev=30)
    names = ["train-openai.jsonl", "train-sharegpt.jsonl", "dev.jsonl", "format_instructions.txt", "summary.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert summary.train.tickets == 120 and summary.dev.tickets == 30 and summary.malformed_lines == len(BAD_LINES)

    inputs = [tmp_path / "a" / name for name in summary.train_files]
    report = prepare_dataset(inputs, tmp_path / "prepared", PrepareOptions(model=str(tiny_model), max_seq_length=1024))
    assert report.accepted == 120 and report.rejected == len(BAD_LINES) == len(report.rejections_by_reason)
    assert set(report.formats) == {"openai", "conversations", "sharegpt", "alpaca"}
    assert report.error_rate < 0.05

    cases = load_cases(tmp_path / "a" / "dev.jsonl")
    assert len(cases) == 30 and all(set(c.expected) == {"category", "priority"} and c.required == ("reply",) for c in cases)
    assert all(len(c.messages) == 1 and c.messages[0]["role"] == "user" for c in cases)


def test_training_answers_meet_the_answer_contract(tmp_path: Path) -> None:
    write_ticket_data(tmp_path, seed=0, n_train=200, n_dev=10)
    answers = []
    for line in (tmp_path / "train-openai.jsonl").read_bytes().splitlines():
        if line in BAD_LINES:
            continue
        record = json.loads(line)
        turns = record.get("messages") or record.get("conversations") or [{}]
        if turns[-1].get("role") == "assistant" and turns[-1]["content"].strip():
            answers.append(turns[-1]["content"])
    assert len(answers) >= 95
    for answer in answers:
        triage = Triage.model_validate_json(answer)
        assert triage.to_answer() == answer  # one line, fixed field order
        assert 1 <= len(re.findall(r"[.!?](\s|$)", triage.reply)) <= 3
        assert score_answer(answer, {"category": triage.category, "priority": triage.priority}, ["reply"]).exact
