"""QLoRA / LoRA training speed and memory on one CUDA GPU: the seed's stack against lorafleet's path.

Model: the Llama-3.1-8B architecture with random weights built on the GPU (speed does not depend on
values). Rows, same data and LoRA init (train_gpu_rows.py): (a) transformers + PEFT over a bitsandbytes
NF4 base, gradient checkpointing, bf16 autocast, paged 8-bit AdamW, batch 2; (b) the same adapter through
`lorafleet.train.fast.enable_speedups` (what `lorafleet train` applies on CUDA), planned within (a)'s
measured peak, with `frozen_bf16` on; (c)/(d) the same two over a bf16 base (torch AdamW). Variants
(--variants) are further (b) rows; `exact` is `lorafleet train`'s defaults. Optional: the longest
sequence that trains at batch 1 (train_gpu_context.py) and a per-kernel profile (train_gpu_profile.py).

--unsloth adds row (u), Unsloth's QLoRA on the same weights (saved once to --model-dir), data, LoRA
configuration (dropout 0) and steps, in a process of its own (train_gpu_unsloth.py), before every other row;
the `@u` variants are then lorafleet's exact defaults planned within (u)'s peak reserved memory.

FLOPs counted per token (stated in BENCHMARKS.md): frozen base weights have no weight-gradient matmul,
so a linear of P weights costs 2P forward + 2P input-gradient; LoRA (r, in, out) costs 2r(in+out)
forward + 4r(in+out) backward; causal attention 2·S·H forward and twice that backward per layer.
"useful" TFLOP/s counts those once (the same work for every row); "hw" adds each row's recomputation.

Memory: "steady GB" is the peak after the warm-up steps (as rounds 1-6 reported it); "run GB" is the
peak of the whole row, the warm-up and the CUDA-graph capture included. Allocated memory for eager
rows, reserved memory for graphed rows (a graph's pool is reserved, not allocated, between replays).

    python3 benchmarks/train_gpu.py --out DIR [--rows c,d,d-none,a,b] [--variants exact,exact-norope,...]
        [--context-search [--context-exact]] [--context-probe a:SEQ,b:SEQ] [--profile] [--layers N]

What each round changed and measured is in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# Every row runs with growable allocator segments, as `lorafleet train` sets them: a CUDA graph's private
# pool fragments with fixed segments (reserved 21.0 GB against 17.3 GB, round 6). Set before torch starts.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402
from train_gpu_rows import build_bf16, make_data, quantize_nf4, run_row  # noqa: E402

# `lorafleet train`'s CUDA defaults: graphs, unsynced 8-bit AdamW, fp32 residual (exact), RoPE kernel
EXACT = dict(graphs=True, paged=False, frozen_bf16=False, triton_rope=True)
# Extra (b) rows (--variants), each within (a)'s peak, or (u)'s for a name ending in @u or @u-...:
# name -> (label, run_row switches).
VARIANTS = {
    "exact": ("(b) exact = train defaults", EXACT),
    "exact-norope": ("(b) exact, no RoPE kernel", dict(graphs=True, paged=False, frozen_bf16=False)),
    "exact-bnbdq": ("(b) exact, bitsandbytes' NF4 dequantization", dict(EXACT, triton_dequant=False)),
    "norope": ("(b) without the RoPE kernel", dict(graphs=True, paged=False)),
    "eager": ("(b) round-5 defaults (eager)", dict(frozen_bf16=False)),  # paged AdamW, no graphs
    "eager-bf16": ("(b) round-5 (b): eager", dict()),
    # The same defaults at dropout 0 (Unsloth's fast path needs it), within (a)'s peak and within (u)'s peak.
    "exact-d0": ("(b) exact, dropout 0", dict(EXACT, dropout=0.0)),
    "exact@u": ("(b) exact in (u)'s memory, dropout 0", dict(EXACT, dropout=0.0)),
    "exact@u-d05": ("(b) exact in (u)'s memory", dict(EXACT)),
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", default="c,d,a,b")
    ap.add_argument("--variants", default="", help=f"extra (b) rows: {', '.join(VARIANTS)} or MODE:MICRO "
                    "(recompute none/attention/offload at a fixed micro-batch, eager), e.g. attention:2")
    ap.add_argument("--context-search", action="store_true")
    ap.add_argument("--context-exact", action="store_true", help="lorafleet's context attempts with the "
                    "`lorafleet train` defaults (frozen_bf16 off) instead of frozen_bf16 on")
    ap.add_argument("--context-cap-s", type=float, default=240)
    ap.add_argument("--context-probe", default="", help="single batch-1 attempts ROW:SEQ,... (row a or b), e.g. "
                    "a:69632,b:286720, to settle the bounds a time-capped search left open")
    ap.add_argument("--profile", action="store_true", help="per-kernel profile of (a), (b), (b) exact; no table")
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--unsloth", action="store_true", help="row (u): Unsloth on the same weights, data and steps")
    ap.add_argument("--unsloth-context-cap-s", type=float, default=0, help="also search (u)'s longest batch-1 "
                    "context for this many seconds")
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/lorafleet-bench-llama8b"),
                    help="where --unsloth saves the bf16 weights, in a folder per layer count (16 GB at 32 layers)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_wanted = args.rows.split(",")
    data = make_data(args.steps, args.batch, args.seq, 128256)
    results: dict[str, dict] = {}
    updates: dict[str, dict] = {}
    refusals: dict[str, str] = {}
    model = build_bf16(args.layers)
    if args.profile:
        from train_gpu_profile import print_summaries, profile_rows

        quantize_nf4(model)
        summaries = profile_rows(model, data, args)
        print_summaries(summaries)
        print("peak GB: " + ", ".join(f"{s['label']} {s['peak_gb']:.2f}" for s in summaries))
        return

    def row(key: str, *run_args, **switches) -> None:
        nonlocal model
        from lorafleet.train.fast.plan import PlanError

        try:
            results[key], updates[key], model = run_row(*run_args[:1], model, *run_args[1:], **switches)
        except PlanError as refused:  # the budget cannot hold the run: the plan says so before training
            refusals[key] = f"{run_args[0]}: {refused}"
            print(f"refused: {refusals[key]}", flush=True)

    if args.unsloth:
        results["u"] = unsloth_row(model, args)
    if "c" in rows_wanted:
        row("c", "(c) plain bf16 LoRA", False, False, data, args)
    if "d" in rows_wanted:
        budget = int(results["c"]["peak_gb"] * 1e9) if "c" in results else None
        row("d", "(d) lorafleet bf16 LoRA", False, True, data, args, budget, graphs=True, triton_rope=True)
    if "d-none" in rows_wanted:  # (d) held to no recompute at micro-batch 1 (graphs), whatever the plan says
        row("d-none", "(d) no recompute, micro 1", False, True, data, args, None, "none", 1, graphs=True,
            triton_rope=True)
    quantize_nf4(model)
    if "a" in rows_wanted:
        row("a", "(a) seed stack QLoRA", True, False, data, args)
    # (b) rows plan within (a)'s steady peak, as in every earlier round (the run peak is reported beside it).
    budget = int(results["a"]["peak_gb"] * 1e9) if "a" in results else None
    if "b" in rows_wanted:  # the fastest: CUDA graphs, unsynced 8-bit AdamW, Liger RoPE, frozen_bf16 (not exact)
        row("b", "(b) lorafleet QLoRA", True, True, data, args, budget, graphs=True, paged=False, triton_rope=True)
    for variant in filter(None, args.variants.split(",")):
        if variant in VARIANTS:
            label, switches = VARIANTS[variant]
            within = int(results["u"]["peak_gb"] * 1e9) if "@u" in variant else budget
            row(f"b-{variant}", label, True, True, data, args, within, **switches)
            continue
        mode, micro = variant.split(":")
        row(f"b-{variant}", f"(b) {mode} micro {micro}", True, True, data, args, None, mode, int(micro))
    context, context_log = context_rows(model, args)
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"),
                  alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
                  args={k: str(v) for k, v in vars(args).items()}, results=results, refusals=refusals, context=context,
                  context_log=context_log, lora_update_vs_a=update_differences(updates))
    (args.out / "train_gpu.json").write_text(json.dumps(report, indent=1))
    print_table(report)


def unsloth_row(model, args) -> dict:
    """Row (u): save the bf16 weights (and the embedded model's tokenizer, which Unsloth's loader wants
    beside them) once, then run train_gpu_unsloth.py on them in a process of its own."""
    import subprocess
    import sys

    from lorafleet.models import load_tokenizer, resolve_model
    from train_gpu_rows import flops_per_token

    model_dir = args.model_dir / f"layers{args.layers}"  # a folder saved for another --layers is never reused
    if not (model_dir / "config.json").exists():
        started = time.perf_counter()
        model.save_pretrained(model_dir)
        load_tokenizer(resolve_model().path).save_pretrained(model_dir)
        print(f"saved the bf16 weights for (u) in {time.perf_counter() - started:.0f} s", flush=True)
    out = args.out / f"unsloth_b{args.batch}.json"
    command = [sys.executable, str(Path(__file__).with_name("train_gpu_unsloth.py")), "--model", str(model_dir),
               "--out", str(out), "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--context-cap-s", str(args.unsloth_context_cap_s)]
    subprocess.run(command, check=True)
    raw = json.loads(out.read_text())
    useful, hw = flops_per_token(model.config, args.seq, "transformers")  # every layer recomputed
    tps = raw["tokens_per_s"]
    return dict(raw, quantized=True, fast=False, graphs=False, peak_gb=raw["peak_reserved_gb"],
                peak_run_gb=raw["peak_reserved_gb"], reserved_gb=raw["peak_reserved_gb"],
                useful_tflops=tps * useful / 1e12, hw_tflops=tps * hw / 1e12)


def context_rows(model, args) -> tuple[dict, list]:
    """--context-search and --context-probe attempts (train_gpu_context.py)."""
    from train_gpu_context import fits, longest_context

    log: list = []
    context = {}
    if args.context_search:
        a_good, a_bad, model = longest_context(model, False, 32768, args.context_cap_s / 3, log)
        b_start = max(a_good, 16384) * 4
        b_good, b_bad, model = longest_context(model, True, b_start, args.context_cap_s, log, args.context_exact)
        context = dict(a=(a_good, a_bad), b=(b_good, b_bad), b_mode="exact" if args.context_exact else "frozen_bf16")
    for probe in filter(None, args.context_probe.split(",")):
        row, seq = probe.split(":")
        ok, seconds, peak, model = fits(model, row == "b", int(seq), args.context_exact)
        log.append(dict(fast=row == "b", exact=args.context_exact, seq=int(seq), fits=ok, seconds=seconds,
                        peak_gb=peak))
        print(json.dumps(log[-1]), flush=True)
    return context, log


def update_differences(updates: dict[str, dict]) -> dict[str, float]:
    """||ΔW(row) - ΔW(a)|| / ||ΔW(a)|| over all adapter tensors, ΔW = final - initial LoRA weights, for every
    QLoRA row. The rows draw their dropout masks from different generators (p = 0.05), so this includes that
    noise; tests/train/fast/test_gpu_loss_power.py makes the same comparison without dropout, with a tolerance."""
    if "a" not in updates:
        return {}
    ref = updates["a"]
    norm = sum(float(t.pow(2).sum()) for t in ref.values()) ** 0.5
    return {key: sum(float((u[n] - ref[n]).pow(2).sum()) for n in ref) ** 0.5 / norm
            for key, u in updates.items() if key != "a" and key.startswith("b") and u.keys() == ref.keys()}


def print_table(report: dict) -> None:
    res = report["results"]
    print(f"\n{report['device']}  torch {report['torch']}  {report['date']}")
    print(f"{'row':28} {'micro':>5} {'ckpt':>12} {'graphs':>6} {'tok/s':>8} {'steady GB':>9} {'run GB':>7} "
          f"{'rsvd GB':>8} {'useful TF/s':>11} {'hw TF/s':>8} {'ratio':>6}")
    for key, row in res.items():
        base = res.get("a" if row["quantized"] else "c")  # (u) too is shown against (a)
        ratio = row["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        print(f"{row['row']:28} {row['micro_batch']:>5} {row['checkpointing']:>12} {str(row['graphs']):>6} "
              f"{row['tokens_per_s']:>8.0f} {row['peak_gb']:>9.1f} {row['peak_run_gb']:>7.1f} "
              f"{row['reserved_gb']:>8.1f} {row['useful_tflops']:>11.0f} {row['hw_tflops']:>8.0f} {ratio:>6.2f}")
    if "a" in res:
        la = res["a"]["losses"]
        print("loss (a): " + " ".join(f"{x:.4f}" for x in la))
        for key, row in res.items():
            if (key.startswith("b") or key == "u") and len(row["losses"]) == len(la):
                print(f"loss ({key}): " + " ".join(f"{x:.4f}" for x in row["losses"]))
                print(f"max |loss(a) - loss({key})| over {len(la)} steps: "
                      f"{max(abs(x - y) for x, y in zip(la, row['losses'])):.4f}")
        for key, diff in report["lora_update_vs_a"].items():
            print(f"relative difference of the LoRA updates, ({key}) vs (a) (dropout masks differ): {diff:.4f}")
    if "u" in res:
        for key, row in res.items():
            if key != "u" and row["quantized"]:
                print(f"{row['row']} / (u): {row['tokens_per_s'] / res['u']['tokens_per_s']:.2f}x tokens/s, "
                      f"{row['reserved_gb']:.1f} GB reserved against (u)'s {res['u']['peak_gb']:.1f} GB")
        if "context" in res["u"]:
            print(f"(u) longest batch-1 context (fits, first fail): {res['u']['context']}")
    for message in report["refusals"].values():
        print(f"refused: {message}")
    if report["context"]:
        print(f"longest batch-1 context (fits, first fail): {report['context']}")


if __name__ == "__main__":
    main()
