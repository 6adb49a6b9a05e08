"""The chunked head + cross-entropy (linear_ce.py) against building the logits."""

import pytest
import torch
import torch.nn.functional as F

from lorafleet.data.dataset import IGNORE_INDEX
from lorafleet.train.fast import linear_ce
from lorafleet.train.fast.linear_ce import chunk_rows, linear_cross_entropy_sum


def _reference(hidden, weight, target):
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("chunk_elements", [2**25, 7 * 50])  # one chunk; many chunks with a ragged last one
def test_loss_and_input_gradient_match_the_logits_path(monkeypatch, chunk_elements):
    monkeypatch.setattr(linear_ce, "CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, dtype=torch.float64)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64)
    target = torch.randint(0, 50, (37,), generator=g)
    target[::3] = IGNORE_INDEX
    ours_h = hidden.clone().requires_grad_()
    ref_h = hidden.clone().requires_grad_()
    ours = linear_cross_entropy_sum(ours_h, weight, target) * 0.37
    ref = _reference(ref_h, weight, target) * 0.37
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(ours_h.grad, ref_h.grad, rtol=1e-5, atol=1e-6)
    assert torch.all(ours_h.grad[::3] == 0)  # ignored rows get no gradient


def test_all_rows_ignored_gives_zero_loss_and_gradient():
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy_sum(hidden, torch.randn(10, 8), torch.full((4,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(hidden.grad) == 0


def test_chunk_rows_bounds_the_logits():
    assert chunk_rows(128256) * 128256 <= linear_ce.CHUNK_ELEMENTS and chunk_rows(128256) % 8 == 0
    assert chunk_rows(10**9) == 1
