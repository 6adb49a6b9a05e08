"""Counts and token statistics collected while `prepare` streams, in memory that does not grow with the data.

Token lengths are kept as exact counts per length (lengths never exceed --max-seq-length), so the
percentiles and the histogram are exact without storing one number per sample. Only the duplicate
filter grows: 8 bytes of hash per accepted conversation (about 20 MB of Python set at 200k).
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from lorafleet.data.dataset import IGNORE_INDEX, PrepareReport, TokenStats
from lorafleet.data.template import Encoded
from lorafleet.data.validate import Chat, Reason


def chat_key(chat: Chat) -> int:
    """A 64-bit identity of a normalised chat: equal chats (from any of the four formats) get equal keys."""
    # Record/unit separators between fields: cheaper than JSON, and content with them is only ever a tie.
    canonical = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in chat).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big")


def split_for(key: int, seed: int, eval_fraction: float) -> str:
    """'train' or 'eval' from the sample's content and the seed alone: stable under reordering and appending."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") / 2**64 < eval_fraction else "train"


class Tally:
    """Running totals of one prepare run."""

    def __init__(self, max_seq_length: int) -> None:
        self.lines = 0
        self.duplicates = 0
        self.truncated = 0
        self.splits: Counter[str] = Counter()
        self.formats: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.seen: set[int] = set()
        self.total_tokens = 0
        self.trained_tokens = 0
        self._length_counts = np.zeros(max_seq_length + 1, dtype=np.int64)  # index = num_tokens

    @property
    def accepted(self) -> int:
        return self.splits.total()

    def add_sample(self, split: str, sample: Encoded, fmt: str, truncated: bool) -> None:
        self.splits[split] += 1
        self.formats[fmt] += 1
        self.truncated += truncated
        self.total_tokens += sample.num_tokens
        self.trained_tokens += int(np.count_nonzero(sample.labels != IGNORE_INDEX))
        self._length_counts[sample.num_tokens] += 1

    def add_rejection(self, reason: Reason) -> None:
        self.rejections[reason.value] += 1

    def report(self, **fields) -> PrepareReport:
        """The PrepareReport of the run so far; `fields` supplies model, fingerprints, max_seq_length and seed."""
        return PrepareReport(
            lines=self.lines,
            accepted=self.accepted,
            rejected=self.rejections.total(),
            duplicates=self.duplicates,
            truncated=self.truncated,
            train=self.splits["train"],
            eval=self.splits["eval"],
            tokens=TokenStats(
                total=self.total_tokens,
                trained=self.trained_tokens,
                max=self._max_length(),
                p50=self._percentile(0.50),
                p95=self._percentile(0.95),
            ),
            rejections_by_reason=dict(sorted(self.rejections.items())),
            length_histogram=self._histogram(),
            formats=dict(sorted(self.formats.items())),
            **fields,
        )

    def _max_length(self) -> int:
        nonzero = np.flatnonzero(self._length_counts)
        return int(nonzero[-1]) if len(nonzero) else 0

    def _percentile(self, q: float) -> float:
        """Nearest-rank percentile of the sample lengths."""
        n = int(self._length_counts.sum())
        if n == 0:
            return 0.0
        rank = max(1, int(np.ceil(q * n)))
        return float(np.searchsorted(np.cumsum(self._length_counts), rank))

    def _histogram(self, max_buckets: int = 10) -> list[tuple[int, int]]:
        """(inclusive upper bound, count) over equal-width buckets of a round width (1, 2 or 5 × 10^k)."""
        top = self._max_length()
        if top == 0:
            return []
        width = next(w * 10**k for k in range(12) for w in (1, 2, 5) if w * 10**k * max_buckets >= top)
        cumulative = np.cumsum(self._length_counts)
        bounds = list(range(width, top + width, width))
        counts_at = [int(cumulative[min(b, len(cumulative) - 1)]) for b in bounds]
        return [(b, c - p) for b, c, p in zip(bounds, counts_at, [0] + counts_at[:-1])]
