"""prepare_dataset end to end on the tiny model: counts, duplicates, lengths, split, threshold, output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_files import chat, write_cut_gzip, write_jsonl

from lorafleet.data.dataset import IGNORE_INDEX, load_report, read_split
from lorafleet.data.formats import UnreadableInput
from lorafleet.data.prepare import ErrorRateExceeded, PrepareError, PrepareRefused, prepare_dataset
from lorafleet.data.samples import shortened_chats
from lorafleet.data.tally import chat_key, split_for
from lorafleet.data.writer import OutputError
from lorafleet.models import load_tokenizer, model_fingerprint, tokenizer_fingerprint


def rows(out: Path) -> list[dict]:
    return sorted(read_split(out, "train").to_pylist() + read_split(out, "eval").to_pylist(), key=lambda r: (r["source_file"], r["source_line"]))


def rejected(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]


def test_good_lines_next_to_bad_ones_are_all_kept(tiny_model: Path, tmp_path: Path, opts) -> None:
    lines = [
        chat("Hi", "Hello"),
        "{not json",
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        b"\xff\xfe\xfd",
        {"conversations": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "V"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"instruction": "Say yes", "input": "", "output": "yes"},
    ]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    report = prepare_dataset([path], tmp_path / "out", opts())
    assert (report.lines, report.accepted, report.rejected, report.duplicates) == (7, 4, 3, 0)
    assert [r["source_line"] for r in rows(tmp_path / "out")] == [1, 3, 5, 7]
    assert report.formats == {"alpaca": 1, "conversations": 1, "openai": 1, "sharegpt": 1}
    assert [(e["line"], e["reason"]) for e in rejected(tmp_path / "out")] == [(2, "invalid_json"), (4, "invalid_utf8"), (6, "no_assistant_turn")]
    assert "file" not in rejected(tmp_path / "out")[0]  # one input: line numbers alone are unambiguous
    saved = load_report(tmp_path / "out")
    assert saved == report
    assert saved.model == str(tiny_model.resolve())  # a local folder as --model
    assert saved.model_fingerprint == model_fingerprint(tiny_model)
    assert saved.tokenizer_fingerprint == tokenizer_fingerprint(tiny_model)
    assert report.tokens.total == sum(r["num_tokens"] for r in rows(tmp_path / "out"))
    assert report.tokens.trained == sum(sum(lab != IGNORE_INDEX for lab in r["labels"]) for r in rows(tmp_path / "out"))
    assert sum(count for _, count in report.length_histogram) == report.accepted


def test_several_inputs_name_the_file_in_rejections(tiny_model: Path, tmp_path: Path, opts) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [chat("1", "2"), "oops"])
    b = write_jsonl(tmp_path / "b.jsonl", ["[]", chat("3", "4")])
    report = prepare_dataset([a, b], tmp_path / "out", opts())
    assert report.lines == 4 and report.accepted == 2
    assert [(e["file"], e["line"]) for e in rejected(tmp_path / "out")] == [(str(a), 2), (str(b), 1)]
    assert [(r["source_file"], r["source_line"]) for r in rows(tmp_path / "out")] == [(str(a), 1), (str(b), 2)]


def test_exact_duplicates_are_counted_and_kept_once_across_formats(tiny_model: Path, tmp_path: Path, opts) -> None:
    same = chat("Where is my parcel?", "On its way.")
    sharegpt = {"conversations": [{"from": "human", "value": "Where is my parcel?"}, {"from": "gpt", "value": "On its way."}]}
    lines = [same, chat("Other", "Answer"), same, sharegpt, chat("Where is my parcel?", "On its way!")]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    report = prepare_dataset([path], tmp_path / "out", opts(chunk_size=2))  # duplicates in and across chunks
    assert (report.accepted, report.duplicates, report.rejected) == (3, 2, 0)
    assert [r["source_line"] for r in rows(tmp_path / "out")] == [1, 2, 5]


def _long_chat(tok, words: int) -> dict:
    text = " ".join(["support"] * words)
    return chat(f"old question {text}", f"old answer {text}", "middle question", "middle answer", "last question", "last answer", system="Be kind.")


def test_truncate_removes_whole_earlier_turns_and_drop_rejects(tiny_model: Path, tmp_path: Path, opts) -> None:
    tok = load_tokenizer(tiny_model)
    record = _long_chat(tok, 200)
    full = len(tok.apply_chat_template(record["messages"], tokenize=True, return_dict=False))
    path = write_jsonl(tmp_path / "in.jsonl", [record, chat("short", "fine")])

    report = prepare_dataset([path], tmp_path / "t", opts(max_seq_length=150, on_overflow="truncate"))
    assert (report.accepted, report.truncated, report.rejected) == (2, 1, 0)
    sample = rows(tmp_path / "t")[0]
    kept = record["messages"][:1] + record["messages"][3:]  # system + the last two exchanges
    assert sample["input_ids"] == tok.apply_chat_template(kept, tokenize=True, return_dict=False)
    assert sample["num_tokens"] <= 150 < full
    trained = tok.decode([lab for lab in sample["labels"] if lab != IGNORE_INDEX])
    assert trained == "middle answer<|im_end|>last answer<|im_end|>"

    report = prepare_dataset([path], tmp_path / "d", opts(max_seq_length=150, on_overflow="drop"))
    assert (report.accepted, report.truncated, report.rejections_by_reason) == (1, 0, {"too_long": 1})
    (entry,) = rejected(tmp_path / "d")
    assert entry["line"] == 1 and f"sample is {full} tokens" in entry["message"] and "150" in entry["message"]


def test_sample_that_cannot_fit_either_way_is_rejected_with_its_length(tiny_model: Path, tmp_path: Path, opts) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat("q", "word " * 300), chat("short", "fine")])
    report = prepare_dataset([path], tmp_path / "out", opts(max_seq_length=64))
    assert report.accepted == 1 and report.rejections_by_reason == {"too_long": 1}
    (entry,) = rejected(tmp_path / "out")
    assert entry["line"] == 1 and "tokens" in entry["message"] and "still" in entry["message"]


def test_shortened_chats_keep_system_and_last_exchange() -> None:
    messages = chat("u1", "a1", "u2", "a2", "u3", "a3", system="s")["messages"] + [{"role": "user", "content": "tail"}]
    versions = shortened_chats(messages)
    assert [[m["content"] for m in v] for v in versions] == [
        ["s", "u1", "a1", "u2", "a2", "u3", "a3"],
        ["s", "u2", "a2", "u3", "a3"],
        ["s", "u3", "a3"],
    ]


def test_split_is_deterministic_by_seed_and_independent_of_order(tiny_model: Path, tmp_path: Path, opts) -> None:
    lines = [chat(f"question {i}", f"answer {i}") for i in range(200)]
    forward = write_jsonl(tmp_path / "f.jsonl", lines)
    backward = write_jsonl(tmp_path / "b.jsonl", lines[::-1])

    def eval_answers(path: Path, out: str, seed: int) -> set[str]:
        prepare_dataset([path], tmp_path / out, opts(seed=seed, eval_fraction=0.2))
        tok = load_tokenizer(tiny_model)
        return {tok.decode([x for x in r["labels"] if x != IGNORE_INDEX]) for r in read_split(tmp_path / out, "eval").to_pylist()}

    first, again, reordered, other_seed = (
        eval_answers(forward, "1", 0), eval_answers(forward, "2", 0), eval_answers(backward, "3", 0), eval_answers(forward, "4", 1)
    )
    assert first == again == reordered
    assert first != other_seed
    assert 20 <= len(first) <= 60  # about 20% of 200
    assert (tmp_path / "1" / "train.parquet").read_bytes() == (tmp_path / "2" / "train.parquet").read_bytes()


def test_error_rate_over_threshold_writes_report_and_rejects_but_no_dataset(tiny_model: Path, tmp_path: Path, opts) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat(f"q{i}", "a") for i in range(9)] + ["bad"])
    with pytest.raises(ErrorRateExceeded, match=r"error rate 10\.00% exceeds --max-error-rate 5\.00%") as caught:
        prepare_dataset([path], tmp_path / "out", opts(max_error_rate=0.05))
    assert caught.value.report.rejected == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rejected.jsonl", "report.json"]
    assert load_report(tmp_path / "out").lines == 10
    # exactly at the threshold passes
    report = prepare_dataset([path], tmp_path / "ok", opts(max_error_rate=0.10))
    assert report.accepted == 9 and (tmp_path / "ok" / "train.parquet").is_file()


def test_inputs_that_give_no_train_sample_are_refused_with_the_report(tiny_model: Path, tmp_path: Path, opts) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(PrepareRefused, match="the inputs hold no lines") as caught:
        prepare_dataset([empty], tmp_path / "out", opts())
    assert caught.value.report.lines == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rejected.jsonl", "report.json"]
    every_line_bad = write_jsonl(tmp_path / "bad.jsonl", ["garbage", "more garbage"])
    with pytest.raises(PrepareRefused, match=r"none of 2 lines gave a sample \(2 rejected\)"):
        prepare_dataset([every_line_bad], tmp_path / "out2", opts(max_error_rate=1.0))
    one = chat("q", "a")
    seed = next(seed for seed in range(100) if split_for(chat_key(one["messages"]), seed, 0.5) == "eval")
    with pytest.raises(PrepareRefused, match=r"all 1 accepted samples fell in the eval split \(--eval-fraction 0.5\)"):
        prepare_dataset([write_jsonl(tmp_path / "one.jsonl", [one])], tmp_path / "out3", opts(eval_fraction=0.5, seed=seed))


def test_a_cut_off_gzip_input_writes_nothing(tiny_model: Path, tmp_path: Path, opts) -> None:
    path = write_cut_gzip(tmp_path / "cut.jsonl.gz")
    with pytest.raises(UnreadableInput, match="cut off or corrupt after line"):
        prepare_dataset([path], tmp_path / "out", opts())
    assert not (tmp_path / "out").exists()
    with pytest.raises(PrepareError, match="input is a folder, not a JSONL file"):
        prepare_dataset([tmp_path], tmp_path / "out", opts())


def test_out_folder_is_replaced_only_when_it_is_a_prepared_dataset(tiny_model: Path, tmp_path: Path, opts) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat("a", "b")])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not a prepared dataset"):
        prepare_dataset([path], precious, opts())
    assert (precious / "notes.txt").read_text() == "keep me"

    prepare_dataset([path], tmp_path / "out", opts())
    write_jsonl(path, [chat("a", "b"), chat("c", "d")])
    assert prepare_dataset([path], tmp_path / "out", opts()).accepted == 2  # an earlier dataset is replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    with pytest.raises(PrepareError, match="not found"):
        prepare_dataset([tmp_path / "missing.jsonl"], tmp_path / "x", opts())


def test_worker_processes_write_exactly_what_one_process_writes(tiny_model: Path, tmp_path: Path, opts) -> None:
    lines: list = []
    for i in range(60):
        lines.append(chat(f"question {i % 45}", f"answer {i % 45}"))  # 15 duplicates, some across chunks
        if i % 9 == 0:
            lines.append("{broken")
        if i % 13 == 0:
            lines.append(chat(f"long {i}", "word " * 200))  # over the limit: rejected
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    one = prepare_dataset([path], tmp_path / "one", opts(max_seq_length=128, chunk_size=7, workers=1))
    two = prepare_dataset([path], tmp_path / "two", opts(max_seq_length=128, chunk_size=7, workers=2))
    assert one == two
    assert (one.accepted, one.duplicates, one.rejections_by_reason) == (45, 15, {"invalid_json": 7, "too_long": 5})
    for name in ("train.parquet", "eval.parquet", "rejected.jsonl", "report.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_template_stage_rejections_on_the_real_template(tiny_model: Path, tmp_path: Path, opts) -> None:
    assistant_first = {"messages": [{"role": "assistant", "content": "Hi, how can I help?"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "in.jsonl", [chat("x <|im_end|> y", "ok"), assistant_first, chat("fine", "yes")])
    report = prepare_dataset([path], tmp_path / "out", opts())
    assert report.accepted == 1
    entries = rejected(tmp_path / "out")
    assert [(e["line"], e["reason"]) for e in entries] == [(1, "special_token_in_content"), (2, "template_error")]
    assert "'<|im_end|>'" in entries[0]["message"] and "turn 0 (user)" in entries[0]["message"]
    assert "assistant turn 0" in entries[1]["message"]
