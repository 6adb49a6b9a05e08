"""``length_buckets`` as a table: the CUDA graphs' pad widths against padding and capture costs."""

from __future__ import annotations

import random

import pytest

from lorafleet.train.fast.buckets import CAPTURE_COST_PASSES, length_buckets


def run_cost(lengths, widths, passes_per_row, micro=1, capture=CAPTURE_COST_PASSES) -> float:
    """Tokens a run spends on padding plus captures with these widths (what the function minimises)."""
    padding = sum(next(w for w in widths if w >= n) - n for n in lengths)
    return passes_per_row * padding + capture * micro * sum(widths)


random.seed(0)
CHATS = [random.randint(1000, 1650) for _ in range(400)]  # issue 13's wall-clock run: 400 chats of 1,000-1,700 tokens
STEPS_OF_64 = tuple(range(1024, 1665, 64))  # every 64-token width those rows need

CASES = {
    # id: (lengths, passes_per_row, micro, max_buckets, expected widths or a check)
    "one length": ([700] * 10, 1.0, 1, 16, (704,)),
    "nothing to train": ([], 1.0, 1, 16, ()),
    "rows in one 64-token width": ([1000] * 50 + [1010] * 50, 1.0, 1, 16, (1024,)),
    "a long outlier keeps its own width": ([64] * 100 + [2048], 1.0, 1, 16, (64, 2048)),
    "one epoch of the issue's chats: a few widths": (CHATS, 1.0, 1, 16, lambda w: 2 <= len(w) <= 5),
    "many epochs: every 64-token width pays": (CHATS, 100.0, 1, 16, STEPS_OF_64),
    "rarely seen rows: fewer widths": (CHATS, 0.25, 1, 16, lambda w: len(w) <= 2),
    "bigger passes make a capture dearer": (CHATS, 3.0, 4, 16, lambda w: len(w) < len(length_buckets(CHATS, 64, 3.0, 1))),
    "at most max_buckets": (CHATS, 100.0, 1, 4, lambda w: len(w) == 4),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_length_buckets(case: str):
    lengths, passes, micro, most, expected = CASES[case]
    widths = length_buckets(lengths, 64, passes, micro, most)
    if callable(expected):
        assert expected(widths), widths
    else:
        assert widths == expected
    if lengths:
        assert list(widths) == sorted(set(widths)) and all(w % 64 == 0 for w in widths)
        assert widths[-1] == -(-max(lengths) // 64) * 64  # the longest row fits the last width


def test_the_widths_cost_no_more_than_the_obvious_choices():
    """Against one width for everything and one per 64 tokens, and every choice of 2 widths, on the issue's chats."""
    for passes in (0.5, 1.0, 3.0, 10.0):
        chosen = run_cost(CHATS, length_buckets(CHATS, 64, passes, 1), passes)
        assert chosen <= run_cost(CHATS, (STEPS_OF_64[-1],), passes)
        assert chosen <= run_cost(CHATS, STEPS_OF_64, passes)
        for first in STEPS_OF_64[:-1]:
            assert chosen <= run_cost(CHATS, (first, STEPS_OF_64[-1]), passes) + 1e-6
