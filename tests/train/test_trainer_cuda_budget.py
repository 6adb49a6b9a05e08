"""`max_memory_gb` (`lorafleet train --max-memory`) on the GPU: each budget just below what the previous run's
plan expected makes `train_adapter` plan a cheaper run (less recompute or a smaller micro-batch, down to
offload at the largest micro-batch that fits, then at one row), and the run's measured peak (reserved memory,
weights loading included) stays under the budget; below the least the run needs, the run is refused before
training. Marked ``gpu``; skipped without CUDA."""

from __future__ import annotations

import gc
import importlib.util
import random
from pathlib import Path

import pytest
import torch
from prepared_data import write_prepared

from lorafleet.config import TrainConfig
from lorafleet.models import load_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"),
]


def mid_llama(dest: Path, tokenizer_from: Path) -> Path:
    """A random Llama large enough that activations of 2,048-token rows matter next to its weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(tokenizer_from)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def long_chats(n: int) -> list[list[dict[str, str]]]:
    """Chats of about 1,500-2,000 tokens: a long question, a short patterned answer."""
    rng = random.Random(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    return [[{"role": "user", "content": " ".join(rng.choice(words) for _ in range(rng.randint(700, 900)))},
             {"role": "assistant", "content": "noted: " + " ".join(words[: rng.randint(3, 9)])}] for _ in range(n)]


def test_each_budget_is_honoured_and_too_small_a_budget_is_refused(tiny_model: Path, tmp_path: Path):
    from lorafleet.train.fast.plan import PlanError
    from lorafleet.train.trainer import train_adapter

    model = mid_llama(tmp_path / "mid-llama", tiny_model)
    chats = long_chats(10)
    data = write_prepared(tmp_path / "data", model, chats[:8], chats[8:], max_seq_length=2048)

    def config(budget: int | None, name: str) -> tuple[TrainConfig, Path]:
        return TrainConfig(model=str(model), quantization="nf4", batch_size=4, max_steps=3, lora_r=8, lora_alpha=16,
                           seed=0, max_memory_gb=budget / 1e9 if budget else None), tmp_path / name

    budget, plans = None, []
    for run in range(10):
        gc.collect()
        torch.cuda.empty_cache()
        held = torch.cuda.memory_reserved()  # what earlier runs of this process still hold (graph pools)
        torch.cuda.reset_peak_memory_stats()
        train_config, out = config(budget, f"run{run}")
        plan = train_adapter(data, out, train_config, show_progress=False).speedup_plan
        allocated, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved() - held
        plans.append((plan["micro_batch"], plan["recompute"], plan["peak_estimate"], budget, allocated, reserved))
        print(f"budget {budget}: plan {plans[-1][:3]}, peak allocated {allocated}, reserved {reserved} "
              f"beyond {held} held before", flush=True)
        if budget is not None:
            assert allocated <= budget and reserved <= budget, plans
            assert plan["memory_budget"] == int(budget / 1e9 * 1e9)
            # These rows pad to several lengths: a budgeted plan runs eagerly (plan.py, BUDGET_WITH_LENGTHS).
            assert not plan["cuda_graphs"] and any("several lengths" in r for r in plan["reasons"]), plan
        if (plan["micro_batch"], plan["recompute"]) == (1, "offload"):  # the least memory a run can plan
            break
        budget = plan["peak_estimate"] - 1  # just below what this plan expects: the next must be cheaper
    modes = [(micro, recompute) for micro, recompute, *_ in plans]
    assert len(set(modes)) == len(modes) >= 3, plans  # every budget planned a different, cheaper run
    assert modes[0] == (4, "none") and modes[-1] == (1, "offload"), plans
    gc.collect()
    torch.cuda.empty_cache()
    train_config, out = config(plans[-1][2] - 1, "refused")
    with pytest.raises(PlanError, match="this run needs about"):
        train_adapter(data, out, train_config, show_progress=False)
    assert not (out / "adapter_model.safetensors").exists()
