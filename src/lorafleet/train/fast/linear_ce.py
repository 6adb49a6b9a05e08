"""Cross-entropy of a frozen output head, taken from hidden states in row chunks.

At the Llama-3 vocabulary (128,256) the logits of one 4,096-token pass are 2 GB in fp32; the plain
path builds them, upcasts them and keeps them for backward. Here the rows go through the head in
chunks of at most ``CHUNK_ELEMENTS`` logits: each chunk's loss and its input gradient
(softmax - one-hot) @ W are computed in forward, so only the (rows, hidden) input gradient waits for
backward, which multiplies it by the incoming scale. Liger's fused linear cross-entropy works the same
way, but reads the label count back to the host on every call (``.item()``), which a CUDA graph
cannot capture; these are plain torch ops with no host sync (``graphs.py`` captures them).

Numerics follow the plain path under bf16 autocast: logits come from a matmul in the hidden state's
dtype, the softmax and loss are in fp32, and the logit gradient is rounded to the hidden dtype before
its matmul with W (what autocast's matmul backward does).

``hidden_state_loss_sum`` is the fused path's training loss: the decoder's last hidden state through
the head, with no post-processing of the logits; exact only for architectures whose causal-LM head is a
plain linear (the allow-list in ``architectures.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lorafleet.data.dataset import IGNORE_INDEX

CHUNK_ELEMENTS = 2**25  # fp32 logits per chunk (128 MiB)


def chunk_rows(vocab: int) -> int:
    """Rows per chunk for a head of ``vocab`` outputs (a multiple of 8 when it can be)."""
    rows = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return rows // 8 * 8 if rows >= 8 else rows


class LinearCrossEntropySum(torch.autograd.Function):
    """Sum over rows whose target is not IGNORE_INDEX of cross-entropy(hidden @ weight.T, target).

    hidden (rows, h) and weight (vocab, h) in one dtype; weight is frozen (no gradient); target (rows,).
    Returns an fp32 scalar.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor) -> Tensor:
        rows = chunk_rows(weight.shape[0])
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], rows):
            h, t = hidden[start : start + rows], target[start : start + rows]
            logits = (h @ weight.t()).float()  # (chunk, vocab)
            lse = torch.logsumexp(logits, dim=-1)
            valid = t != IGNORE_INDEX
            index = t.clamp_min(0).unsqueeze(1)
            picked = logits.gather(1, index).squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if grad is not None:
                probs = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in the logits' memory
                probs.scatter_add_(1, index, torch.full_like(picked, -1.0).unsqueeze(1))
                probs.mul_(valid.unsqueeze(1))
                torch.matmul(probs.to(hidden.dtype), weight, out=grad[start : start + rows])
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, d_total: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad.float() * d_total).to(grad.dtype), None, None


def linear_cross_entropy_sum(hidden: Tensor, weight: Tensor, target: Tensor) -> Tensor:
    """See ``LinearCrossEntropySum``; ``hidden`` may be any (..., h) shape, ``target`` its leading shape."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return LinearCrossEntropySum.apply(flat, weight.to(flat.dtype), target.reshape(-1))


def hidden_state_loss_sum(model: nn.Module, input_ids: Tensor, labels: Tensor, fused: bool = True,
                          **model_kwargs) -> tuple[Tensor, Tensor]:
    """(sum of next-token cross-entropy over labelled positions, number of them as a tensor, so that
    no host sync is forced): labels are shifted here, IGNORE_INDEX positions carry no loss.
    ``fused`` takes the loss from the hidden states in chunks (``LinearCrossEntropySum``), never building
    the logits; otherwise the logits are built and the loss taken in fp32."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=input_ids, **model_kwargs).last_hidden_state  # (batch, seq, hidden)
    head = base.get_output_embeddings()
    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    target = labels[:, 1:].reshape(-1)
    count = (target != IGNORE_INDEX).sum()
    if fused and head.bias is None:
        dtype = torch.get_autocast_dtype(flat.device.type) if torch.is_autocast_enabled(flat.device.type) else flat.dtype
        return linear_cross_entropy_sum(flat.to(dtype), head.weight, target), count
    logits = head(flat).float()  # (tokens, vocab)
    return nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum"), count
