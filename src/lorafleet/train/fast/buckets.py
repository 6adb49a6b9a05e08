"""``length_buckets``: the widths a graphed run pads its passes to, one CUDA graph each (a pure decision).

Each new pass width costs two eager warm-up passes and a capture before it replays (``graphs.PassGraphs``);
each token of padding costs a token of compute every time its row is seen. The plan (``plan.py``) asks this
function for the widths that cost the run the least of the two together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

MAX_GRAPHS = 16  # graphs.PassGraphs captures at most this many pass shapes; further ones stay eager
# What a new pass width costs before its first replay, in replayed passes of that width: its eager warm-up
# passes (graphs.PassGraphs: 2, each about 3x a replay at micro-batch 1) and the capture itself. Issue 13
# measured about 1.35 s per new 64-token width at the 8B shape (rows of 1,000-1,700 tokens), about 10 replays.
CAPTURE_COST_PASSES = 10


def length_buckets(lengths: Sequence[int], multiple: int, passes_per_row: float, micro_batch: int,
                   max_buckets: int = MAX_GRAPHS, capture_cost: float = CAPTURE_COST_PASSES) -> tuple[int, ...]:
    """The pad widths of a graphed run: each pass is right-padded to the first width that holds its longest
    row, and each width is one captured graph. Chosen to minimise the tokens the run spends on them: the
    padding of every row (``passes_per_row`` times over the run) plus ``capture_cost`` passes of ``micro_batch``
    rows at each width (what a new width costs before it replays), with at most ``max_buckets`` widths.
    Each width is a multiple of ``multiple`` and the last holds the longest row. Pure."""
    if not lengths:
        return ()
    counts: Counter[int] = Counter()  # rows, and their tokens, per candidate width
    lengths_at: Counter[int] = Counter()
    for n in lengths:
        width = -(-n // multiple) * multiple
        counts[width] += 1
        lengths_at[width] += n
    widths = sorted(counts)
    rows = [0]  # prefix sums over the candidate widths: rows, and their tokens
    tokens = [0]
    for w in widths:
        rows.append(rows[-1] + counts[w])
        tokens.append(tokens[-1] + lengths_at[w])

    def cost(i: int, j: int) -> float:  # one width widths[j - 1] for the rows of candidates i..j-1
        width = widths[j - 1]
        padding = (rows[j] - rows[i]) * width - (tokens[j] - tokens[i])
        return passes_per_row * padding + capture_cost * micro_batch * width

    k = len(widths)
    inf = float("inf")
    best = [[inf] * (k + 1) for _ in range(min(max_buckets, k) + 1)]  # best[b][j]: candidates 0..j-1 in b widths
    choice = [[0] * (k + 1) for _ in range(len(best))]
    best[0][0] = 0.0
    for b in range(1, len(best)):
        for j in range(1, k + 1):
            for i in range(b - 1, j):
                total = best[b - 1][i] + cost(i, j)
                if total < best[b][j]:
                    best[b][j], choice[b][j] = total, i
    b = min(range(1, len(best)), key=lambda n: (best[n][k], n))
    chosen, j = [], k
    while b > 0:
        chosen.append(widths[j - 1])
        j, b = choice[b][j], b - 1
    return tuple(reversed(chosen))
