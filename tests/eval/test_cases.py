"""Reading eval data files: what a line may hold, and how bad lines are reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorafleet.eval.cases import EvalCase, EvalDataError, load_cases, parse_case

USER = {"role": "user", "content": "I was charged twice"}
SYSTEM = {"role": "system", "content": "be brief"}
ASSISTANT = {"role": "assistant", "content": '{"category": "billing"}'}


@pytest.mark.parametrize(
    ("obj", "messages", "expected", "required"),
    [
        ({"messages": [USER]}, [USER], {}, ()),
        ({"messages": [USER], "expected": {"category": "billing"}, "required": ["reply"], "meta": {"x": 1}},
         [USER], {"category": "billing"}, ("reply",)),
        ({"messages": [SYSTEM, USER, ASSISTANT], "expected": {"n": 1}}, [SYSTEM, USER], {"n": 1}, ()),  # reference answer dropped
    ],
)
def test_parse_case_accepts(obj: dict, messages: list, expected: dict, required: tuple) -> None:
    case = parse_case(json.dumps(obj), 7)
    assert (case.line, list(case.messages), case.expected, case.required) == (7, messages, expected, required)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"messages": [', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "hi"}', "messages: Field required"),
        ('{"messages": []}', "messages: List should have at least 1 item"),
        (json.dumps({"messages": [{"role": "customer", "content": "hi"}]}), "messages.0.role: Input should be"),
        (json.dumps({"messages": [{"role": "user", "content": 5}]}), "messages.0.content: Input should be a valid string"),
        (json.dumps({"messages": [USER], "expected": ["billing"]}), "expected: Input should be a valid dictionary"),
        (json.dumps({"messages": [USER], "required": "reply"}), "required: Input should be a valid list"),
        (json.dumps({"messages": [SYSTEM]}), "the conversation must end with a user message"),
        (json.dumps({"messages": [ASSISTANT]}), "the conversation must end with a user message"),
        (json.dumps({"messages": [USER, ASSISTANT, ASSISTANT]}), "the conversation must end with a user message"),
    ],
)
def test_parse_case_rejects_with_what_and_where(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
        parse_case(text, 1)


def test_prompt_as_system_message_replaces_or_leads() -> None:
    plain = EvalCase(1, (USER,))
    prompted = EvalCase(2, (SYSTEM, USER))
    assert plain.with_prompt(None) == [USER]
    assert plain.with_prompt("rules") == [{"role": "system", "content": "rules"}, USER]
    assert prompted.with_prompt("rules") == [{"role": "system", "content": "rules"}, USER]
    assert prompted.with_prompt(None) == [SYSTEM, USER]


def test_prompt_in_the_user_turn_goes_before_the_first_user_message() -> None:
    later = {"role": "user", "content": "and also"}
    case = EvalCase(1, (SYSTEM, USER, {"role": "assistant", "content": "ok"}, later))
    assert case.with_prompt("rules", "user") == [
        SYSTEM, {"role": "user", "content": "rules\n\nI was charged twice"}, {"role": "assistant", "content": "ok"}, later,
    ]
    assert case.messages[1] == USER  # the case itself is unchanged


def test_load_cases_skips_blank_lines_and_honours_limit(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    lines = [json.dumps({"messages": [USER], "expected": {"i": i}}) for i in range(5)]
    path.write_text("\ufeff" + lines[0] + "\n\n" + "\r\n".join(lines[1:]) + "\n", encoding="utf-8")
    assert [c.line for c in load_cases(path)] == [1, 3, 4, 5, 6]
    assert [c.expected["i"] for c in load_cases(path, limit=2)] == [0, 1]


def test_load_cases_lists_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "dev.jsonl"
    good = json.dumps({"messages": [USER]})
    path.write_text("\n".join([good, "{oops", good, json.dumps({"messages": [SYSTEM]})]) + "\n")
    with pytest.raises(EvalDataError) as info:
        load_cases(path)
    text = str(info.value)
    assert "2 bad line(s)" in text and "line 2: not valid JSON" in text and "line 4: the conversation must end" in text


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_load_cases_refuses_a_file_without_cases(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(EvalDataError, match="holds no conversations"):
        load_cases(path)


def test_load_cases_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match="cannot read eval data"):
        load_cases(tmp_path / "nope.jsonl")
