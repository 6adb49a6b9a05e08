"""Chat template rendering and the assistant-only loss mask, for any chat template.

The mask comes from rendering prefixes, not from `{% generation %}` tags (few templates have them).
For assistant turn i, the template renders the chat before it with the generation prompt (what a
server sends to the model) and the chat through it; both must be prefixes of the whole rendering.
The characters between the two are what the model produces for that turn; the trained part runs to
the end of the first end-of-turn token in it. Text the template adds after that token (ChatML's
newline after `<|im_end|>`) is not trained: a server stops at the end-of-turn token and never
generates it. One tokenization of the whole text with character offsets then marks every token
that overlaps a trained span, so the token ids are exactly `apply_chat_template(tokenize=True)`'s.
Only whitespace merges across a span's start (content that begins with spaces, after a template
newline); that one straddling token holds content, so it is trained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorafleet.data.dataset import IGNORE_INDEX
from lorafleet.data.validate import Chat, Reason, Rejection


@dataclass(frozen=True)
class Rendered:
    """A chat rendered to text, with the character spans whose tokens are trained."""

    text: str
    spans: list[tuple[int, int]]  # [start, stop) character offsets, one per assistant turn


@dataclass(frozen=True)
class Encoded:
    """A tokenized sample: `labels` equals `input_ids` where trained and IGNORE_INDEX elsewhere."""

    input_ids: np.ndarray  # (num_tokens,) int32
    labels: np.ndarray  # (num_tokens,) int32

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class ChatEncoder:
    """Renders chats with a tokenizer's chat template and encodes them with assistant-only labels."""

    def __init__(self, tokenizer, model_path: Path) -> None:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        # The same compiled template and variables as tokenizer.apply_chat_template(tokenize=False), without
        # its per-call overhead; a test checks that both render identically.
        self._template = _compile_jinja_template(tokenizer.chat_template)
        self._template_vars = dict(tokenizer.special_tokens_map)
        self._backend = tokenizer.backend_tokenizer
        self.eot_ids = end_of_turn_ids(tokenizer, model_path)
        self.eot_tokens = [tokenizer.convert_ids_to_tokens(i) for i in sorted(self.eot_ids)]
        specials = sorted(
            (t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content), key=len, reverse=True
        )
        self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None

    def render(self, chat: Chat, add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=chat, add_generation_prompt=add_generation_prompt, **self._template_vars)

    def plan(self, chat: Chat) -> Rendered | Rejection:
        """Render `chat` and locate its trained spans; a Rejection when the template cannot be diffed."""
        for i, message in enumerate(chat):
            if self._special_re and (found := self._special_re.search(message["content"])):
                return Rejection(
                    Reason.SPECIAL_TOKEN_IN_CONTENT,
                    f"turn {i} ({message['role']}) contains the special token {found.group()!r}, which would be read "
                    "as template markup",
                )
        try:
            full = self.render(chat)
            spans = []
            for i, message in enumerate(chat):
                if message["role"] != "assistant":
                    continue
                before = self.render(chat[:i], add_generation_prompt=True)
                through = full if i == len(chat) - 1 else self.render(chat[: i + 1])
                span = self._trained_span(i, before, through, full)
                if isinstance(span, Rejection):
                    return span
                spans.append(span)
        except Exception as exc:  # a chat template is arbitrary code: any failure is this sample's problem
            return Rejection(Reason.TEMPLATE_ERROR, f"the chat template failed: {type(exc).__name__}: {exc}")
        return Rendered(full, spans)

    def _trained_span(self, turn: int, before: str, through: str, full: str) -> tuple[int, int] | Rejection:
        if not (through.startswith(before) and full.startswith(through)):
            return Rejection(
                Reason.TEMPLATE_ERROR,
                f"the chat template renders the chat up to assistant turn {turn} differently from the whole chat, "
                "so the turn cannot be located (does the template need a user turn first?)",
            )
        start, stop = len(before), len(through)
        if start == stop:
            return Rejection(Reason.NO_TRAINED_TOKENS, f"assistant turn {turn} renders to no text, nothing to train")
        ends = [full.find(t, start, stop) for t in self.eot_tokens]
        found = [pos + len(t) for pos, t in zip(ends, self.eot_tokens) if pos >= 0]
        if not found:
            return Rejection(
                Reason.NO_END_OF_TURN,
                f"assistant turn {turn} does not end with the end-of-turn token {' or '.join(self.eot_tokens)}",
            )
        return start, min(found)

    def encode_batch(self, rendered: list[Rendered]) -> list[Encoded | Rejection]:
        """Tokenize many rendered chats at once and compute their labels.

        Safe to call from a worker thread: the Rust tokenizer releases the GIL while it encodes.
        """
        encodings = self._backend.encode_batch([r.text for r in rendered], add_special_tokens=False)
        return [self._labels(r, enc) for r, enc in zip(rendered, encodings)]

    def encode(self, chat: Chat) -> Encoded | Rejection:
        plan = self.plan(chat)
        return plan if isinstance(plan, Rejection) else self.encode_batch([plan])[0]

    def _labels(self, rendered: Rendered, encoding) -> Encoded | Rejection:
        input_ids = np.asarray(encoding.ids, dtype=np.int32)  # (num_tokens,)
        labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int32)
        for turn, (lo, hi) in enumerate(rendered.spans):
            tokens = self._token_range(encoding, lo, hi)
            if tokens is None or int(input_ids[tokens[1] - 1]) not in self.eot_ids:
                return Rejection(
                    Reason.NO_END_OF_TURN,
                    f"assistant turn {turn} does not end with a single end-of-turn token after tokenization",
                )
            labels[tokens[0] : tokens[1]] = input_ids[tokens[0] : tokens[1]]
        if not (labels != IGNORE_INDEX).any():
            return Rejection(Reason.NO_TRAINED_TOKENS, "no token of this sample is trained")
        return Encoded(input_ids, labels)

    @staticmethod
    def _token_range(encoding, lo: int, hi: int) -> tuple[int, int] | None:
        """[first, stop) indices of the tokens overlapping characters [lo, hi)."""
        first, last = encoding.char_to_token(lo), encoding.char_to_token(hi - 1)
        if first is not None and last is not None:
            return first, last + 1
        # A character outside every token's offsets (a tokenizer that trims offsets): scan them.
        offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        starts, stops = offsets[:, 0], offsets[:, 1]
        hits = np.flatnonzero((starts < hi) & ((stops > lo) | ((starts == stops) & (starts >= lo))))
        return (int(hits[0]), int(hits[-1]) + 1) if len(hits) else None


def end_of_turn_ids(tokenizer, model_path: Path) -> set[int]:
    """Token ids that end an assistant turn: the tokenizer's EOS plus generation_config's eos_token_id(s).

    Raises ValueError when the model declares none.
    """
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation_config = Path(model_path) / "generation_config.json"
    if generation_config.is_file():
        declared = json.loads(generation_config.read_text(encoding="utf-8")).get("eos_token_id")
        ids.update(int(i) for i in (declared if isinstance(declared, list) else [declared]) if i is not None)
    if not ids:
        raise ValueError(f"the tokenizer in {model_path} declares no end-of-turn (EOS) token")
    return ids
