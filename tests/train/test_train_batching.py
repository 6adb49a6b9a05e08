"""Batch order, sharding and collation: pure functions, checked exhaustively on small inputs."""

from __future__ import annotations

from lorafleet.data.dataset import IGNORE_INDEX
from lorafleet.train.batching import Sample, collate_packed, collate_padded, epoch_batches, eval_batches, rank_shard

LENGTHS = [5, 40, 7, 33, 12, 9, 28, 3, 17, 21, 30, 11, 6, 14]


def test_epoch_order_is_deterministic_and_covers_every_sample_once():
    a = epoch_batches(LENGTHS, batch_size=2, world_size=1, seed=3, epoch=1, window=2)
    assert a == epoch_batches(LENGTHS, batch_size=2, world_size=1, seed=3, epoch=1, window=2)
    assert a != epoch_batches(LENGTHS, batch_size=2, world_size=1, seed=3, epoch=2, window=2)
    assert sorted(i for b in a for i in b) == list(range(len(LENGTHS)))


def test_length_grouping_reduces_padding():
    def padding(batches):
        return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)

    grouped = epoch_batches(LENGTHS, batch_size=2, world_size=1, seed=0, epoch=0, window=7)
    ungrouped = epoch_batches(LENGTHS, batch_size=2, world_size=1, seed=0, epoch=0, window=1)
    assert padding(grouped) < padding(ungrouped)


def test_global_batches_shard_over_ranks_without_overlap():
    batches = epoch_batches(LENGTHS, batch_size=2, world_size=2, seed=0, epoch=0, window=4)
    for batch in batches:
        shards = [rank_shard(batch, r, 2) for r in range(2)]
        assert shards[0] + shards[1] == batch and all(shards)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))  # 14 = 3×4 + 2: nothing dropped


def test_trailing_batch_smaller_than_world_is_dropped():
    batches = epoch_batches([4] * 5, batch_size=2, world_size=4, seed=0, epoch=0, window=1)
    assert [len(b) for b in batches] == [5]
    assert epoch_batches([4] * 9, batch_size=2, world_size=4, seed=0, epoch=0, window=1).count([]) == 0
    assert sum(len(b) for b in epoch_batches([4] * 9, batch_size=2, world_size=4, seed=0, epoch=0, window=1)) == 8


def test_eval_batches_split_samples_across_ranks():
    mine = [i for r in range(2) for b in eval_batches(LENGTHS, 3, r, 2) for i in b]
    assert sorted(mine) == list(range(len(LENGTHS)))


def test_collate_padded_masks_padding():
    batch = collate_padded([Sample([1, 2, 3], [IGNORE_INDEX, 2, 3]), Sample([4], [4])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]


def test_collate_packed_restarts_positions_and_never_trains_across_samples():
    batch = collate_packed([Sample([1, 2, 3], [1, 2, 3]), Sample([4, 5], [4, 5])])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    # token 3 (end of sample 1) must not be trained to predict token 4 (start of sample 2)
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]]


def test_trained_tokens_excludes_the_first_position():
    assert Sample([1, 2, 3], [1, 2, IGNORE_INDEX]).trained_tokens == 1


def test_split_step_balances_micro_batches_and_never_leaves_a_rank_empty():
    from lorafleet.train.batching import split_step

    assert split_step(list(range(8)), grad_accum=2, world_size=2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_step(list(range(5)), grad_accum=2, world_size=2) == [[0, 1], [2, 3, 4]]
    assert split_step(list(range(3)), grad_accum=2, world_size=2) == [[0, 1, 2]]  # 2 micro-batches would starve a rank
