"""QLoRA / LoRA training speed and memory on one CUDA GPU: the seed's stack against lorafleet's path.

Model: the Llama-3.1-8B architecture with random weights built on the GPU (speed does not depend on
values). Rows, same data and LoRA init: (a) transformers + PEFT over a bitsandbytes NF4 base, gradient
checkpointing, bf16 autocast, paged 8-bit AdamW, batch 2; (b) the same adapter through
`lorafleet.train.speedups` (what `lorafleet train` applies on CUDA); (c)/(d) the same two over a bf16
base (torch AdamW). Optional: the longest sequence that trains at batch 1 for (a) and (b).

FLOPs counted per token (stated in BENCHMARKS.md): frozen base weights have no weight-gradient matmul,
so a linear of P weights costs 2P forward + 2P input-gradient; LoRA (r, in, out) costs 2r(in+out)
forward + 4r(in+out) backward; causal attention 2·S·H forward and twice that backward per layer.
"useful" TFLOP/s counts those once (the same work for every row); "hw" adds each row's recomputation.

    python3 benchmarks/train_gpu.py --out DIR [--context-search] [--layers N for a smoke run]
        [--variants exact,exact-norope,norope,eager,eager-bf16,dropout,attention:2,none:1]   (see VARIANTS;
        exact = `lorafleet train`'s defaults; (b) itself adds frozen_bf16) [--rows c,d,d-none,a,b]
        [--context-probe a:SEQ,b:SEQ]   (single batch-1 attempts)
        [--profile [--profile-steps N]]   (per-kernel CUDA profile instead of the table, train_gpu_profile.py)

Notes: what each change of the second round should do to (b) at seq 2048, micro-batch 2 (4,096 tokens
per pass), from memory traffic at ~3 TB/s on the H200 (predictions, to be checked by the table):
* planner: micro-batch 2 with attention-only recompute fits under (a)'s peak once the plan counts
  the weights after the bf16 change and uses the measured-accurate estimate (plan.py); the committed
  plan chose micro-batch 1 (0.98×) where micro-batch 2 measured 1.36×. Expected: ≈1.36× by itself.
* Triton SiLU·mul backward: eager made ~14 passes over fp32 (tokens, 14336) tensors (~6-7 GB per
  layer); one kernel reads 3 and writes 2 bf16 tensors. Expected −2 ms per layer, ≈ −65 ms per step.
* Triton RMSNorm (forward, recompute, backward; 2 per layer): ~3 GB → ~0.4 GB per layer, ≈ −25 ms/step.
  It also frees ~0.7 GB of fp32 temporaries at the peak (the estimate drops 12 bytes per intermediate
  element per token), which keeps micro-batch 2 inside (a)'s peak with the 512 MiB margin.
* One dequantization fewer per attention weight (the recomputation's weights reused in backward):
  ~4 × 42 M NF4 → bf16 per layer, well under 1 ms per step; also fewer small launches.
* Dropout rescale on the (tokens, r) LoRA tensors: one x-sized pass fewer per LoRA linear in forward,
  recompute and backward (~1.2 GB per layer), ≈ −10 ms per step.
Together: from ~548 ms to ~440 ms per step, i.e. ≈1.6-1.7× over (a); 2.0× is not expected from these.
frozen_bf16 (bf16 residual stream, not exact against (a)) stays on in (b) as before; the `exact`
variant shows the `lorafleet train` default (fp32 residual, 2 GB more weights, so a smaller plan).

Round 4 (BENCHMARKS.md): `--profile` showed the GPU idle for ~30% of a micro-batch-2 step and half of a
micro-batch-1 step (host launch bound), bitsandbytes syncing after every parameter in the optimizer,
and ~0.7 ms per layer each for dropout masks and transformers' RoPE. Triton dropout + Liger RoPE + a
one-sync optimizer were predicted at ≈1.9× and measured 1.48× together; they are opt-in (`dropout`,
`rope` variants) or removed until measured apart.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import time
from pathlib import Path

# Every row runs with growable allocator segments, as `lorafleet train` sets them: a CUDA graph's private
# pool fragments with fixed segments (reserved 21.0 GB against 17.3 GB, round 6). Set before torch starts.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402
from torch import nn

from lorafleet.train import speedups as S

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


# Extra (b) rows (--variants), each within (a)'s peak: name -> (label, run_row switches).
VARIANTS = {
    # `lorafleet train`'s CUDA defaults: graphs, unsynced 8-bit AdamW, fp32 residual (exact), RoPE kernel
    "exact": ("(b) exact = train defaults", dict(graphs=True, paged=False, frozen_bf16=False, triton_rope=True)),
    "exact-norope": ("(b) exact, no RoPE kernel", dict(graphs=True, paged=False, frozen_bf16=False)),
    "norope": ("(b) without the RoPE kernel", dict(graphs=True, paged=False)),
    "eager": ("(b) round-5 defaults (eager)", dict(frozen_bf16=False)),  # paged AdamW, no graphs
    "eager-bf16": ("(b) round-5 (b): eager", dict()),
    "dropout": ("(b) eager + triton_dropout", dict(triton_dropout=True)),
}


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
    """(useful, hardware) FLOPs per trained token; recompute is 'hf'/'offload' (all), 'attention', 'none'."""
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


def setup_row(model, quantized: bool, fast: bool, paged: bool = True):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                        gradient_checkpointing_kwargs={"use_reentrant": False})
    for p in model.parameters():
        p.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing, "gradient checkpointing did not turn on"
    torch.manual_seed(1234)
    peft = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules="all-linear",
                                            use_rslora=True, task_type="CAUSAL_LM"))
    peft.train()
    params = [p for p in peft.parameters() if p.requires_grad]
    if quantized:
        import bitsandbytes as bnb

        if paged:
            opt = bnb.optim.PagedAdamW8bit(params, lr=LR, weight_decay=0.0)
        else:  # lorafleet's: the same update, state in device memory, no GPU sync per parameter
            from lorafleet.train.optim import AdamW8bit

            opt = AdamW8bit(params, lr=LR, weight_decay=0.0)
    else:
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    return peft, params, opt


def teardown_row(peft) -> nn.Module:
    S.remove_speedups(peft)
    model = peft.unload()
    gc.collect()
    torch.cuda.empty_cache()
    return model


def graphed_passes(peft, params):
    """lorafleet's CUDA-graph pass runner (``lorafleet.train.graphs``) over the fused loss."""
    from lorafleet.train.graphs import PassGraphs

    def loss_fn(inputs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return S.hidden_state_loss_sum(peft, inputs["input_ids"], inputs["labels"])[0]
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
                    loss_sum, _ = S.hidden_state_loss_sum(peft, ids[lo:lo + micro], labels[lo:lo + micro])
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


def run_row(name: str, model, quantized: bool, fast: bool, data, args, budget_total: int | None = None,
            checkpointing: str = "auto", micro: int | None = None, frozen_bf16: bool = True,
            graphs: bool = False, paged: bool = True, **switches) -> tuple[dict, nn.Module]:
    peft, params, opt = setup_row(model, quantized, fast, paged)
    batch, seq = data[0][0].shape
    applied = None
    if fast:
        # The plan: the largest micro-batch whose estimated peak (weights after the dtype change +
        # trainable state + activations + 512 MiB margin) stays within (a)'s measured peak.
        torch.cuda.synchronize()
        settings = S.SpeedupSettings(checkpointing=checkpointing, micro_batch=micro, frozen_bf16=frozen_bf16,
                                     cuda_graphs=graphs, **switches)
        applied = S.apply_speedups(peft, settings, seq, rows=batch, memory_budget_bytes=budget_total)
        micro = applied.micro_batch
    micro = micro or batch
    if graphs and fast:
        from lorafleet.train.graphs import capture_problem

        problem = capture_problem(applied.checkpointing)  # as `lorafleet train` decides
        if problem:
            print(f"{name}: CUDA graphs off: {problem}", flush=True)
            graphs = False
    runner = graphed_passes(peft, params) if graphs else None

    def warm():  # after the warm-up steps (graphs captured): the timed steps' memory alone
        capture_peak = torch.cuda.max_memory_allocated()
        gc.collect()
        torch.cuda.empty_cache()
        if graphs:
            print(f"after warm-up: peak allocated {capture_peak / 1e9:.2f} GB (eager passes and capture), "
                  f"reserved {torch.cuda.memory_reserved() / 1e9:.2f} GB with the graph pool", flush=True)
        torch.cuda.reset_peak_memory_stats()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    losses, seconds = train_steps(peft, params, opt, data, micro, fast, args.warmup, runner, warm)
    # A graph's pool stays reserved between replays and is not counted as allocated, so a graphed
    # row's peak is its reserved peak (an upper bound: it includes the allocator's cached blocks).
    peak = torch.cuda.max_memory_reserved() if graphs else torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    timed = len(data) - args.warmup
    tps = batch * seq * timed / seconds
    mode = applied.checkpointing if applied else "hf"
    useful, hw = flops_per_token(peft.get_base_model().config, seq, mode)
    row = dict(row=name, quantized=quantized, fast=fast, micro_batch=micro, batch=batch, checkpointing=mode,
               graphs=bool(graphs), replays=runner.replays if runner else 0, paged_optimizer=paged,
               tokens_per_s=tps, peak_gb=peak / 1e9, reserved_gb=reserved / 1e9, useful_tflops=tps * useful / 1e12, hw_tflops=tps * hw / 1e12,
               losses=losses, applied=applied.__dict__ if applied else None)
    print(json.dumps({k: v for k, v in row.items() if k != "losses"}), flush=True)
    del opt, params
    return row, teardown_row(peft)


def profile_rows(model, data, args) -> list[dict]:
    """``--profile``: (a), (b) as planned in round 3 (frozen_bf16, attention recompute, micro-batch 2) and
    the exact default at micro-batch 1 and 2, each 2 warm + ``--profile-steps`` profiled steps."""
    from train_gpu_profile import profile_steps

    specs = [("a", True, False, None, None), ("b_bf16_attn_m2", True, True, True, 2),
             ("b_exact_attn_m1", True, True, False, 1), ("b_exact_attn_m2", True, True, False, 2)]
    summaries = []
    for label, quantized, fast, frozen_bf16, micro in specs:
        peft, params, opt = setup_row(model, quantized, fast)
        batch, seq = data[0][0].shape
        if fast:
            S.apply_speedups(peft, S.SpeedupSettings(checkpointing="attention", micro_batch=micro,
                                                     frozen_bf16=frozen_bf16), seq, rows=batch)
        micro = micro or batch
        it = iter(range(10**6))
        step = lambda: train_steps(peft, params, opt, [data[next(it) % len(data)]], micro, fast, 1)  # noqa: E731
        torch.cuda.reset_peak_memory_stats()
        summary = profile_steps(step, 2, args.profile_steps, args.layers, label, args.out / "profile")
        summary["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
        print(f"peak {summary['peak_gb']:.2f} GB", flush=True)
        summaries.append(summary)
        del opt, params
        model = teardown_row(peft)
    return summaries


def fits(model, quantized: bool, fast: bool, seq: int) -> tuple[bool, float, float]:
    """Does one batch-1 training step at ``seq`` fit? Returns (fits, seconds, peak GB)."""
    peft, params, opt = setup_row(model, quantized, fast)
    if fast:
        S.apply_speedups(peft, S.SpeedupSettings(), seq, rows=1)
    data = make_data(1, 1, seq, 128256)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    ok = True
    try:
        train_steps(peft, params, opt, data, 1, fast, 0)
    except torch.OutOfMemoryError:
        ok = False
    seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated() / 1e9
    opt.zero_grad(set_to_none=True)
    del opt, params, data
    model = teardown_row(peft)
    return ok, seconds, peak, model


def longest_context(model, fast: bool, start: int, cap_s: float, log: list) -> tuple[int, int | None, object]:
    """Doubling from ``start`` then bisection (to 1/16 of the gap) within ``cap_s`` seconds; an attempt
    predicted (quadratic in seq from the last one) to overrun the cap is not started. Returns
    (longest that fit, shortest that failed or None if never reached, model)."""
    good, bad, seq, t0, last = 0, None, start, time.perf_counter(), (start, 1.0)
    while True:
        predicted = last[1] * (seq / last[0]) ** 2
        if time.perf_counter() - t0 + predicted > cap_s:
            break
        ok, seconds, peak, model = fits(model, True, fast, seq)
        log.append(dict(fast=fast, seq=seq, fits=ok, seconds=seconds, peak_gb=peak))
        print(json.dumps(log[-1]), flush=True)
        if ok:
            good, last = seq, (seq, seconds)
        else:
            bad = seq
        if bad is None:
            seq *= 2
        elif bad - good <= max(1024, bad // 16):
            break
        else:
            seq = (good + bad) // 2 // 1024 * 1024
    return good, bad, model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", default="c,d,a,b")
    ap.add_argument("--variants", default="", help="extra (b) rows: MODE:MICRO,... e.g. attention:2,none:1")
    ap.add_argument("--context-search", action="store_true")
    ap.add_argument("--context-cap-s", type=float, default=240)
    ap.add_argument("--context-probe", default="", help="single batch-1 attempts ROW:SEQ,... (row a or b), e.g. "
                    "a:69632,b:286720, to settle the bounds a time-capped search left open")
    ap.add_argument("--profile", action="store_true", help="per-kernel profile of (a), (b), (b) exact; no table")
    ap.add_argument("--profile-steps", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_wanted = args.rows.split(",")
    data = make_data(args.steps, args.batch, args.seq, 128256)
    results: dict[str, dict] = {}
    model = build_bf16(args.layers)
    if args.profile:
        from train_gpu_profile import print_summaries

        quantize_nf4(model)
        summaries = profile_rows(model, data, args)
        print_summaries(summaries)
        print("peak GB: " + ", ".join(f"{s['label']} {s['peak_gb']:.2f}" for s in summaries))
        return
    if "c" in rows_wanted:
        results["c"], model = run_row("(c) plain bf16 LoRA", model, False, False, data, args)
    if "d" in rows_wanted:
        budget = results["c"]["peak_gb"] * 1e9 if "c" in results else None
        results["d"], model = run_row("(d) lorafleet bf16 LoRA", model, False, True, data, args, budget,
                                      graphs=True, triton_rope=True)
    if "d-none" in rows_wanted:  # (d) held to no recompute at micro-batch 1 (graphs), whatever the plan says
        results["d-none"], model = run_row("(d) no recompute, micro 1", model, False, True, data, args, None,
                                           "none", 1, graphs=True, triton_rope=True)
    quantize_nf4(model)
    if "a" in rows_wanted:
        results["a"], model = run_row("(a) seed stack QLoRA", model, True, False, data, args)
    budget = results["a"]["peak_gb"] * 1e9 if "a" in results else None  # (b) rows plan within (a)'s peak
    if "b" in rows_wanted:  # the fastest: CUDA graphs, unsynced 8-bit AdamW, Liger RoPE, frozen_bf16 (not exact)
        results["b"], model = run_row("(b) lorafleet QLoRA", model, True, True, data, args, budget,
                                      graphs=True, paged=False, triton_rope=True)
    for variant in filter(None, args.variants.split(",")):
        if variant in VARIANTS:
            label, switches = VARIANTS[variant]
            results[f"b-{variant}"], model = run_row(label, model, True, True, data, args, budget, **switches)
            continue
        mode, micro = variant.split(":")
        results[f"b-{variant}"], model = run_row(f"(b) {mode} micro {micro}", model, True, True, data, args,
                                                 None, mode, int(micro))
    context_log: list = []
    context = {}
    if args.context_search:
        a_good, a_bad, model = longest_context(model, False, 32768, args.context_cap_s / 3, context_log)
        b_start = max(a_good, 16384) * 4
        b_good, b_bad, model = longest_context(model, True, b_start, args.context_cap_s, context_log)
        context = dict(a=(a_good, a_bad), b=(b_good, b_bad))
    for probe in filter(None, args.context_probe.split(",")):
        row, seq = probe.split(":")
        ok, seconds, peak, model = fits(model, True, row == "b", int(seq))
        context_log.append(dict(fast=row == "b", seq=int(seq), fits=ok, seconds=seconds, peak_gb=peak))
        print(json.dumps(context_log[-1]), flush=True)
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                  alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                  args={k: str(v) for k, v in vars(args).items()}, results=results, context=context,
                  context_log=context_log)
    (args.out / "train_gpu.json").write_text(json.dumps(report, indent=1))
    print_table(report)


def print_table(report: dict) -> None:
    res = report["results"]
    print(f"\n{report['device']}  torch {report['torch']}  {report['date']}")
    print(f"{'row':28} {'micro':>5} {'ckpt':>9} {'graphs':>6} {'tok/s':>8} {'peak GB':>8} {'rsvd GB':>8} "
          f"{'useful TF/s':>11} {'hw TF/s':>8} {'ratio':>6}")
    for key, row in res.items():
        base = res.get("a" if row["quantized"] else "c")
        ratio = row["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        print(f"{row['row']:28} {row['micro_batch']:>5} {row['checkpointing']:>9} {str(row.get('graphs', False)):>6} "
              f"{row['tokens_per_s']:>8.0f} {row['peak_gb']:>8.1f} {row.get('reserved_gb', float('nan')):>8.1f} "
              f"{row['useful_tflops']:>11.0f} {row['hw_tflops']:>8.0f} {ratio:>6.2f}")
    if "a" in res and "b" in res:
        la, lb = res["a"]["losses"], res["b"]["losses"]
        diff = max(abs(x - y) for x, y in zip(la, lb))
        print("loss (a): " + " ".join(f"{x:.4f}" for x in la))
        print("loss (b): " + " ".join(f"{x:.4f}" for x in lb))
        print(f"max |loss(a) - loss(b)| over {len(la)} steps: {diff:.4f}")
        for key, row in res.items():
            if key.startswith("b-") and len(row["losses"]) == len(la):
                print(f"max |loss(a) - loss({key})|: {max(abs(x - y) for x, y in zip(la, row['losses'])):.4f}")
    if report["context"]:
        print(f"longest batch-1 context (fits, first fail): {report['context']}")


if __name__ == "__main__":
    main()
