"""Real adapter artifacts for the registry tests: PEFT LoRA on the tiny Llama, plus crafting helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from lorafleet.artifact import (
    DatasetSpec, LoraSpec, Manifest, TrainMetrics, file_checksums, load_manifest, write_manifest,
)


def build_artifact(dest: Path, base: Path, r: int = 8, targets: tuple[str, ...] = ("q_proj", "v_proj"),
                   use_dora: bool = False, seed: int = 0) -> Path:
    """A real artifact: PEFT LoRA on `base` saved as safetensors, its tokenizer, metrics.jsonl and a manifest."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorafleet.models import load_tokenizer, model_fingerprint, tokenizer_fingerprint

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=r, lora_alpha=16, target_modules=list(targets), use_dora=use_dora, lora_dropout=0.0,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # non-zero B so that artifacts built with different seeds differ in every tensor
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    dest.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(dest, safe_serialization=True)
    load_tokenizer(base).save_pretrained(dest)
    (dest / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train_loss": 3.0 - 0.1 * s}) + "\n" for s in range(1, 4)), encoding="utf-8"
    )
    manifest = Manifest(
        base_model=str(base), base_fingerprint=model_fingerprint(base), tokenizer_fingerprint=tokenizer_fingerprint(base),
        max_seq_length=512,
        lora=LoraSpec(r=r, alpha=16, dropout=0.0, target_modules=list(targets), use_rslora=False, use_dora=use_dora,
                      quantization="none"),
        dataset=DatasetSpec(sha256="d" * 64, train_samples=10, eval_samples=2),
        metrics=TrainMetrics(train_loss=2.7, eval_loss=2.9, steps=3, tokens_seen=1000),
        files=file_checksums(dest), lorafleet_version="0.1.0",
    )
    write_manifest(dest, manifest)
    return dest


def reseal(folder: Path, **manifest_updates: object) -> None:
    """Recompute the manifest's checksums (and apply updates), so only the intended defect remains."""
    manifest = load_manifest(folder).model_copy(update={"files": file_checksums(folder), **manifest_updates})
    write_manifest(folder, manifest)


def edit_config(**changes: object) -> Callable[[Path], None]:
    """A tamper step: set `changes` in the artifact's adapter_config.json, then reseal the manifest."""
    def tamper(folder: Path) -> None:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        reseal(folder)
    return tamper
