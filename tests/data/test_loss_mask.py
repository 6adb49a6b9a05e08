"""The assistant-only loss mask, checked by decoding, for SmolLM2's ChatML and two other template families."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from chat_files import write_jsonl

from lorafleet.data.dataset import IGNORE_INDEX, read_split
from lorafleet.data.prepare import PrepareRefused, prepare_dataset
from lorafleet.data.template import ChatEncoder, Encoded
from lorafleet.models import load_tokenizer

CHATS = [
    [{"role": "user", "content": "Where is my order #123?"}, {"role": "assistant", "content": "It ships tomorrow."}],
    [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Reset my password"},
        {"role": "assistant", "content": "Click 'Forgot password' on the login page."},
        {"role": "user", "content": "Done, thanks!"},
        {"role": "assistant", "content": "  Glad to help.\n\nAnything else?"},
    ],
    [{"role": "user", "content": "Unicode: 日本語 🎉"}, {"role": "assistant", "content": "Émojis OK ✅"}],
]

# Llama-3 style: BOS in the template, headers, content trimmed, <|eot_id|> ends every turn, no newline after it.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Zephyr style: role tags, </s> after every turn followed by a newline.
ZEPHYR_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def model_with_template(src: Path, dest: Path, template: str, eos: str, specials: list[str]) -> Path:
    """A copy of the tiny model whose tokenizer has `template`, extra special tokens and `eos` as its EOS."""
    shutil.copytree(src, dest)
    (dest / "generation_config.json").unlink(missing_ok=True)
    tokenizer = load_tokenizer(src)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.eos_token = eos
    tokenizer.chat_template = template
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer.save_pretrained(dest)
    return dest


def trained_pieces(labels: list[int]) -> list[list[int]]:
    """Maximal runs of trained label ids."""
    runs, current = [], []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    return runs + ([current] if current else [])


def assert_trained_runs(decoded: list[str], expected: list[str]) -> None:
    """Each trained run decodes to its assistant turn's text and end-of-turn token.

    The one allowed extra: when content starts with whitespace, the tokenizer merges it with the template's
    whitespace before it into one token, which straddles the boundary and is trained (it holds content).
    """
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected):
        assert got == want or (got.endswith(want) and want[:1].isspace() and got[: -len(want)].isspace()), (got, want)


def prepare_and_read(model: Path, tmp_path: Path, opts) -> tuple[list[dict], object]:
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": c} for c in CHATS])
    report = prepare_dataset([path], tmp_path / "out", opts(model=str(model), eval_fraction=0.0))
    assert report.accepted == len(CHATS) and report.rejected == 0
    rows = sorted(read_split(tmp_path / "out", "train").to_pylist(), key=lambda r: r["source_line"])
    return rows, load_tokenizer(model)


def test_chatml_mask_trains_exactly_assistant_content_and_im_end(tiny_model: Path, tmp_path: Path, opts) -> None:
    rows, tok = prepare_and_read(tiny_model, tmp_path, opts)
    for row, messages in zip(rows, CHATS):
        # The sample is the template's own rendering, token for token.
        assert tok.decode(row["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)
        assert row["num_tokens"] == len(row["input_ids"]) == len(row["labels"])
        assert all(lab in (IGNORE_INDEX, tid) for lab, tid in zip(row["labels"], row["input_ids"]))
        # Each trained run is one assistant turn: its content and <|im_end|>, not the newline after it.
        expected = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert_trained_runs([tok.decode(run) for run in trained_pieces(row["labels"])], expected)
        masked = "".join(tok.decode([t]) for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE_INDEX)
        assert "<|im_start|>assistant\n" in masked and not any(m["content"] in masked for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize(
    ("template", "eos", "specials", "expect"),
    [
        (LLAMA3_TEMPLATE, "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], lambda c: c.strip() + "<|eot_id|>"),
        (ZEPHYR_TEMPLATE, "</s>", ["<|user|>", "<|assistant|>", "<|system|>", "</s>"], lambda c: c + "</s>"),
    ],
    ids=["llama3-style", "zephyr-style"],
)
def test_mask_works_for_other_templates(tiny_model, tmp_path, opts, template, eos, specials, expect) -> None:
    model = model_with_template(tiny_model, tmp_path / "model", template, eos, specials)
    rows, tok = prepare_and_read(model, tmp_path, opts)
    for row, messages in zip(rows, CHATS):
        assert tok.decode(row["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)
        expected = [expect(m["content"]) for m in messages if m["role"] == "assistant"]
        assert_trained_runs([tok.decode(run) for run in trained_pieces(row["labels"])], expected)


def test_encoder_renders_like_apply_chat_template(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    encoder = ChatEncoder(tok, tiny_model)
    for messages in CHATS:
        for gen in (False, True):
            assert encoder.render(messages, gen) == tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        encoded = encoder.encode(messages)
        assert isinstance(encoded, Encoded)
        assert encoded.input_ids.tolist() == tok.apply_chat_template(messages, tokenize=True, return_dict=False)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        # assistant turns vanish: nothing left to train
        ("{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}", "no_trained_tokens"),
        # no end-of-turn token after assistant content
        ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "no_end_of_turn"),
        # the template refuses this conversation
        ("{% if messages[-1]['role'] == 'assistant' and messages | length > 2 %}{{ raise_exception('only one exchange') }}{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "template_error"),
    ],
    ids=["no-trained-tokens", "no-end-of-turn", "template-raises"],
)
def test_template_level_rejections(tiny_model, tmp_path, opts, template: str, reason: str) -> None:
    model = model_with_template(tiny_model, tmp_path / "model", template, "<|im_end|>", [])
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CHATS[1]}])
    with pytest.raises(PrepareRefused, match="none of 1 lines gave a sample") as refused:  # its only line is rejected
        prepare_dataset([path], tmp_path / "out", opts(model=str(model)))
    assert refused.value.report.rejections_by_reason == {reason: 1}
    (entry,) = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert entry["line"] == 1 and entry["reason"] == reason and "Reset my password" in entry["raw"]
