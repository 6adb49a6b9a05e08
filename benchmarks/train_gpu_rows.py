"""The rows of `train_gpu.py`: the Llama-3.1-8B-shaped model, the data, and one timed training row.

Each row wraps the same base model in the same LoRA (seed 1234), trains the same steps and unwraps it
again, so rows run one after another on one model. A lorafleet row goes through
`lorafleet.train.fast.enable_speedups`, the same entrance `lorafleet train` uses: the plan is made from
a `TrainConfig` whose `speedups` section holds the row's switches, within a memory budget.
"""

from __future__ import annotations

import gc
import json
import math
import time

import torch
from torch import nn

from lorafleet.config import SpeedupConfig, TrainConfig
from lorafleet.train.fast import FastPath, enable_speedups, hidden_state_loss_sum

R, ALPHA, DROPOUT, LR, CLIP = 32, 64, 0.05, 2e-4, 0.3


def llama8b_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=1 << 20,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def build_bf16(layers: int) -> nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(llama8b_config(layers), torch_dtype=torch.bfloat16)
    model.config.use_cache = False
    return model


def quantize_nf4(model: nn.Module) -> None:
    """Replace every nn.Linear in the decoder layers with NF4 Linear4bit (double quant, bf16 compute),
    one module at a time so the bf16 weights are freed as we go."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for name, child in list(layer.named_modules()):
            for sub_name, sub in list(child.named_children()):
                if type(sub) is nn.Linear:
                    q = bnb.nn.Linear4bit(sub.in_features, sub.out_features, bias=sub.bias is not None,
                                          compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4",
                                          device="meta")
                    q.weight = bnb.nn.Params4bit(sub.weight.data, requires_grad=False, blocksize=64,
                                                 compress_statistics=True, quant_type="nf4").to("cuda")
                    setattr(child, sub_name, q)
                    del sub
    model.is_loaded_in_4bit = True
    gc.collect()
    torch.cuda.empty_cache()


def make_data(steps: int, batch: int, seq: int, vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Chat-like rows: a random prompt (labels -100, a quarter of the row) then an answer that repeats a
    random 64-token motif (learnable), like prepare's assistant mask."""
    g = torch.Generator().manual_seed(42)
    data = []
    for _ in range(steps):
        prompt = torch.randint(0, vocab, (batch, seq // 4), generator=g)
        motif = torch.randint(0, vocab, (batch, 64), generator=g)
        answer = motif.repeat(1, math.ceil((seq - seq // 4) / 64))[:, : seq - seq // 4]
        ids = torch.cat([prompt, answer], 1)
        labels = ids.clone()
        labels[:, : seq // 4] = -100
        data.append((ids.cuda(), labels.cuda()))
    return data


def flops_per_token(cfg, seq: int, recompute: str) -> tuple[float, float]:
    """(useful, hardware) FLOPs per trained token; recompute is 'transformers'/'offload' (all), 'attention',
    'none'."""
    h, i, layers, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_key_value_heads
    kv_dim = kv * h // cfg.num_attention_heads
    attn_lin = [(h, h), (h, kv_dim), (h, kv_dim), (h, h)]
    mlp_lin = [(h, i), (h, i), (i, h)]
    fwd = lambda shapes: sum(2 * a * b + 2 * R * (a + b) for a, b in shapes)  # noqa: E731
    bwd = lambda shapes: sum(2 * a * b + 4 * R * (a + b) for a, b in shapes)  # noqa: E731
    core_fwd = 2 * seq * h
    per_layer = fwd(attn_lin) + fwd(mlp_lin) + bwd(attn_lin) + bwd(mlp_lin) + 3 * core_fwd
    head = 2 * cfg.vocab_size * h * 2
    useful = layers * per_layer + head
    extra = {"none": 0, "attention": fwd(attn_lin) + core_fwd}.get(recompute, fwd(attn_lin) + fwd(mlp_lin) + core_fwd)
    return useful, useful + layers * extra


def setup_row(model, quantized: bool, paged: bool = True, dropout: float = DROPOUT):
    """PEFT LoRA over ``model`` as the seed stack sets it up: kbit preparation, transformers' gradient
    checkpointing (checked on), then the 8-bit AdamW (paged: bitsandbytes'; else lorafleet's) or AdamW."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    for p in model.parameters():
        p.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing, "gradient checkpointing did not turn on"
    torch.manual_seed(1234)
    peft = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=dropout, target_modules="all-linear",
                                            use_rslora=True, task_type="CAUSAL_LM"))
    peft.train()
    params = [p for p in peft.parameters() if p.requires_grad]
    if quantized:
        import bitsandbytes as bnb

        if paged:
            opt = bnb.optim.PagedAdamW8bit(params, lr=LR, weight_decay=0.0)
        else:  # lorafleet's: the same update, state in device memory, no GPU sync per parameter
            from lorafleet.train.fast.optim import AdamW8bit

            opt = AdamW8bit(params, lr=LR, weight_decay=0.0)
    else:
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    return peft, params, opt


def speed_up(peft, quantized: bool, rows: int, seq: int, budget: int | None, dropout: float = DROPOUT,
             **switches) -> FastPath:
    """lorafleet's plan and patches for a row, made as `lorafleet train` makes them (one process, bf16)."""
    config = TrainConfig(batch_size=rows, lora_r=R, lora_alpha=ALPHA, lora_dropout=dropout,
                         quantization="nf4" if quantized else "none", speedups=SpeedupConfig(**switches))
    return enable_speedups(peft, config, "bf16", 1, seq, memory_budget=budget)


def teardown_row(peft, fast: FastPath | None) -> nn.Module:
    if fast is not None:
        fast.patches.remove()
    model = peft.unload()
    gc.collect()
    torch.cuda.empty_cache()
    return model


def graphed_passes(peft, params):
    """lorafleet's CUDA-graph pass runner (``lorafleet.train.fast.graphs``) over the fused loss."""
    from lorafleet.train.fast.graphs import PassGraphs

    def loss_fn(inputs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return hidden_state_loss_sum(peft, inputs["input_ids"], inputs["labels"])[0]
    return PassGraphs(loss_fn, params)


def train_steps(peft, params, opt, data, micro: int, fast: bool, warmup: int, graphs=None,
                on_warm=None) -> tuple[list[float], float]:
    """Runs one optimizer step per data item; returns (losses, seconds for the steps after warmup).
    ``graphs``: a PassGraphs runner does each pass (grads then stay allocated, zeroed in place)."""
    losses, start = [], None
    for step, (ids, labels) in enumerate(data):
        if step == warmup:
            if on_warm:
                on_warm()
            torch.cuda.synchronize()
            start = time.perf_counter()
        n_total = int((labels[:, 1:] != -100).sum())
        total = 0.0
        for lo in range(0, ids.shape[0], micro):
            if graphs is not None:
                total += graphs.run({"input_ids": ids[lo:lo + micro], "labels": labels[lo:lo + micro]}, 1.0 / n_total)
                continue
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if fast:
                    loss_sum, _ = hidden_state_loss_sum(peft, ids[lo:lo + micro], labels[lo:lo + micro])
                    loss = loss_sum / n_total
                else:
                    loss = peft(input_ids=ids[lo:lo + micro], labels=labels[lo:lo + micro]).loss
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=graphs is None)
        losses.append(float(total) / (n_total if graphs is not None else 1))
    torch.cuda.synchronize()
    return losses, time.perf_counter() - start if start is not None else float("nan")


def lora_state(peft) -> dict[str, torch.Tensor]:
    """The adapter's tensors, fp32 on the host (to compare rows' final weights)."""
    return {n: p.detach().cpu().float() for n, p in peft.named_parameters() if p.requires_grad}


def run_row(name: str, model, quantized: bool, fast: bool, data, args, budget: int | None = None,
            recompute: str = "auto", micro: int | None = None, frozen_bf16: bool = True, graphs: bool = False,
            paged: bool = True, triton_rope: bool = False, triton_dequant: bool = True,
            dropout: float = DROPOUT) -> tuple[dict, dict[str, torch.Tensor], nn.Module]:
    """One row: (its result, its LoRA update = final - initial weights, the unwrapped model)."""
    peft, params, opt = setup_row(model, quantized, paged, dropout)
    start = lora_state(peft)
    batch, seq = data[0][0].shape
    path = None
    if fast:
        # The plan: the largest micro-batch whose estimated peak (weights after the dtype change +
        # trainable state + activations + 512 MiB margin) stays within ``budget`` ((a)'s measured peak).
        torch.cuda.synchronize()
        try:
            path = speed_up(peft, quantized, batch, seq, budget, dropout, recompute=recompute,
                            micro_batch=micro or "auto", frozen_bf16=frozen_bf16, cuda_graphs=graphs,
                            paged_optimizer=paged, triton_rope=triton_rope, triton_dequant=triton_dequant)
        except ValueError:  # PlanError: the budget cannot hold the row; the same base model goes on to the next
            del opt, params
            teardown_row(peft, None)
            raise
        print(f"{name}: {path.describe()}", flush=True)
        micro, graphs = path.plan.micro_batch, path.plan.cuda_graphs
    micro = micro or batch
    runner = graphed_passes(peft, params) if graphs else None
    warm_up = {}

    def warm():  # after the warm-up steps (graphs captured): the timed steps' memory alone
        warm_up.update(alloc=torch.cuda.max_memory_allocated(), reserved=torch.cuda.max_memory_reserved())
        gc.collect()
        torch.cuda.empty_cache()
        if graphs:
            print(f"after warm-up: peak allocated {warm_up['alloc'] / 1e9:.2f} GB (eager passes and capture), "
                  f"reserved {torch.cuda.memory_reserved() / 1e9:.2f} GB with the graph pool", flush=True)
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # what earlier rows left cached is not this row's: the peaks start from what is live
    torch.cuda.reset_peak_memory_stats()
    losses, seconds = train_steps(peft, params, opt, data, micro, fast, args.warmup, runner, warm)
    # A graph's pool stays reserved between replays and is not counted as allocated, so a graphed
    # row's peak is its reserved peak (an upper bound: it includes the allocator's cached blocks).
    # "steady" is after the warm-up steps; "run" is the whole row, the warm-up and capture included.
    peak = torch.cuda.max_memory_reserved() if graphs else torch.cuda.max_memory_allocated()
    warm_peak = warm_up.get("reserved" if graphs else "alloc", 0)
    reserved = torch.cuda.max_memory_reserved()
    timed = len(data) - args.warmup
    tps = batch * seq * timed / seconds
    mode = path.plan.recompute if path else "transformers"
    useful, hw = flops_per_token(peft.get_base_model().config, seq, mode)
    row = dict(row=name, quantized=quantized, fast=fast, micro_batch=micro, batch=batch, checkpointing=mode,
               lora_dropout=dropout, budget_gb=budget / 1e9 if budget else None,
               graphs=bool(graphs), replays=runner.replays if runner else 0, paged_optimizer=paged,
               tokens_per_s=tps, peak_gb=peak / 1e9, peak_run_gb=max(peak, warm_peak) / 1e9,
               warmup_alloc_gb=warm_up.get("alloc", 0) / 1e9, warmup_reserved_gb=warm_up.get("reserved", 0) / 1e9,
               reserved_gb=reserved / 1e9, useful_tflops=tps * useful / 1e12, hw_tflops=tps * hw / 1e12,
               losses=losses, plan=path.plan.summary() if path else None)
    print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    update = {n: w - start[n] for n, w in lora_state(peft).items()}
    if runner is not None:
        runner.close()  # the graphs' pool goes back with the row (teardown_row empties the cache)
    del opt, params
    return row, update, teardown_row(peft, path)
