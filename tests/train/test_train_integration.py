"""The embedded SmolLM2 trained on CPU on the demo sample, prepared by the real `prepare`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lorafleet.config import TrainConfig
from lorafleet.data.prepare import PrepareOptions, prepare_dataset
from lorafleet.models import EMBEDDED_DEFAULT, tokenizer_fingerprint
from lorafleet.artifact import verify_artifact
from lorafleet.train.batching import collate_padded, load_samples
from lorafleet.train.loop import causal_lm_loss_sum

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "lorafleet" / "demo" / "data" / "support.jsonl"


def eval_loss(model, samples) -> float:
    """Mean token loss of `model` over `samples` (the oracle: independent of the trainer's own eval)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(samples), 8):
            batch = collate_padded(samples[i : i + 8], pad_token_id=0)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            total += causal_lm_loss_sum(logits, batch["labels"]).item()
            tokens += sum(s.trained_tokens for s in samples[i : i + 8])
    return total / tokens


@pytest.mark.integration
def test_smollm2_lora_on_cpu(embedded_model: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = tmp_path / "prepared"
    prepare_dataset([SAMPLE], data, PrepareOptions(max_seq_length=384, max_error_rate=0.2, eval_fraction=0.05))
    config = TrainConfig(
        model=EMBEDDED_DEFAULT, max_steps=8, batch_size=4, lr=1e-3, lora_r=16, lora_alpha=32,
        gradient_checkpointing=False, eval_every=4, seed=0,
    )
    out = tmp_path / "adapter"
    from lorafleet.train.trainer import train_adapter

    manifest = train_adapter(data, out, config, show_progress=False)
    assert verify_artifact(out) == []
    assert manifest.metrics.steps == 8 and manifest.lora.r == 16 and manifest.base_model == EMBEDDED_DEFAULT
    assert manifest.tokenizer_fingerprint == tokenizer_fingerprint(out) == tokenizer_fingerprint(embedded_model)

    evals = load_samples(data, "eval")
    base = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32).eval()
    before = eval_loss(base, evals)
    adapted = PeftModel.from_pretrained(base, out).eval()
    after = eval_loss(adapted, evals)
    assert after < before - 0.05, (before, after)  # it learned the support style on held-out chats
    assert after == pytest.approx(manifest.metrics.eval_loss, rel=1e-3)  # the manifest reports what PEFT sees
