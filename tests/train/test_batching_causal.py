"""collate_causal: right padding to a length bucket without an attention mask."""

import torch

from lorafleet.data.dataset import IGNORE_INDEX
from lorafleet.train.batching import Sample, collate_causal, collate_padded


def _sample(n: int, first: int) -> Sample:
    ids = list(range(first, first + n))
    return Sample(input_ids=ids, labels=[IGNORE_INDEX] * 2 + ids[2:])


def test_rows_are_right_padded_to_the_bucket_with_ignored_labels():
    samples = [_sample(5, 10), _sample(70, 100)]
    batch = collate_causal(samples, pad_token_id=0, multiple=64)
    assert set(batch) == {"input_ids", "labels"} and batch["input_ids"].shape == (2, 128)
    padded = collate_padded(samples, pad_token_id=0)
    assert torch.equal(batch["input_ids"][:, :70], padded["input_ids"])
    assert torch.equal(batch["labels"][:, :70], padded["labels"])
    assert torch.all(batch["labels"][:, 70:] == IGNORE_INDEX) and torch.all(batch["input_ids"][:, 70:] == 0)
    assert collate_causal([_sample(64, 1)], 0, 64)["input_ids"].shape == (1, 64)  # already a multiple


def test_without_padding_mask_a_causal_model_gives_the_real_tokens_the_same_loss():
    """Why no mask is needed: under causal attention real tokens never see the right padding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    samples = [_sample(9, 20), _sample(30, 40)]
    masked = collate_padded(samples, 0)
    bucket = collate_causal(samples, 0, 16)
    with torch.no_grad():
        a = model(input_ids=masked["input_ids"], attention_mask=masked["attention_mask"]).logits
        b = model(input_ids=bucket["input_ids"]).logits
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        torch.testing.assert_close(b[row, :n], a[row, :n], rtol=1e-5, atol=1e-5)


def test_the_plans_widths_pick_the_first_that_holds_the_longest_row():
    widths = (128, 320, 512)
    cases = [(5, 128), (128, 128), (129, 320), (300, 320), (321, 512), (600, 640)]  # beyond the widths: a multiple
    for n, width in cases:
        assert collate_causal([_sample(n, 1)], 0, 64, widths)["input_ids"].shape == (1, width), n
    assert collate_causal([_sample(5, 1), _sample(200, 1)], 0, 64, widths)["input_ids"].shape == (2, 320)
