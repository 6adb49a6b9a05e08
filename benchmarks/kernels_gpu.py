"""Kernel-level timings of the QLoRA pass's non-matmul parts on one GPU, each against its baseline in the same run.

Two tables, at the Llama-3.1-8B layer shapes (seq 2048, micro-batch 1), every kernel replayed from a CUDA graph
(as the training passes run: launch cost is not counted, only the GPU's time):

  dequant   one decoder layer's seven NF4 weights (double-quantized, blocksize 64, bf16 out) dequantized by
            bitsandbytes (`dequantize_4bit`: three kernels per weight) and by lorafleet's one Triton kernel
            (`nf4_kernel.py`); the outputs are checked bit for bit before timing.
  dropout   the Triton dropout kernel (`dropout_kernel.py`: mask drawn from Philox in registers) against a plain
            copy and a plain add of the same tensors (the memory traffic alone).

    python3 benchmarks/kernels_gpu.py [--out DIR] [--reps 50]

Prints both tables and writes DIR/kernels_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

LAYER = {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096), "gate": (14336, 4096),
         "up": (14336, 4096), "down": (4096, 14336)}  # (out, in) of a Llama-3.1-8B decoder layer
TOKENS = 2048


def graph_ms(fn, reps: int) -> float:
    """GPU milliseconds of one ``fn()``, captured ``reps`` times in one CUDA graph and replayed (median of 5)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return sorted(times)[len(times) // 2]


def eager_ms(fn, reps: int, warm: int = 3) -> float:
    """Milliseconds of one eager ``fn()`` (launches included), after ``warm`` warm calls."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / reps


def dequant_rows(reps: int) -> list[dict]:
    import bitsandbytes.functional as bnbf

    from lorafleet.train.fast.facts import nf4_layout_problem as layout_problem
    from lorafleet.train.fast.nf4_kernel import dequantize_nf4

    weights = []
    for name, shape in LAYER.items():
        dense = (torch.randn(shape, device="cuda") * 0.02).to(torch.bfloat16)
        packed, state = bnbf.quantize_4bit(dense, blocksize=64, quant_type="nf4", compress_statistics=True)
        problem = layout_problem(packed, state)
        if problem:
            raise SystemExit(f"{name}: {problem}")
        if not torch.equal(dequantize_nf4(packed, state), bnbf.dequantize_4bit(packed, state)):
            raise SystemExit(f"{name}: the Triton kernel differs from bitsandbytes")
        weights.append((packed, state))
    params = sum(a * b for a, b in LAYER.values())
    moved = params * 2.5  # bytes: half a byte read, two written per weight (absmax traffic is ~1/64 of that)
    rows = []
    for label, fn in (("bitsandbytes dequantize_4bit", lambda: [bnbf.dequantize_4bit(p, s) for p, s in weights]),
                      ("lorafleet Triton kernel", lambda: [dequantize_nf4(p, s) for p, s in weights])):
        ms = graph_ms(fn, reps)
        rows.append(dict(kernel=label, ms_per_layer=ms, gb_per_s=moved / ms / 1e6))
    for row in rows:
        row["vs_baseline"] = rows[0]["ms_per_layer"] / row["ms_per_layer"]
    return rows


def dropout_rows(reps: int) -> list[dict]:
    from lorafleet.train.fast import dropout_kernel

    rows = []
    for width in (4096, 14336):
        x = torch.randn(TOKENS, width, device="cuda", dtype=torch.bfloat16)
        dx = torch.randn_like(x)
        seed = dropout_kernel.device_seed(x.device)
        moved = x.numel() * 2 * 2
        for label, fn, traffic in (
            ("copy (x.clone)", lambda: x.clone(), moved),
            ("Triton dropped(x)", lambda: dropout_kernel.dropped(x, 0.05, seed), moved),
            ("add (dx += t)", lambda: dx.add_(x), moved * 3 // 2),
            ("Triton add_dropped_", lambda: dropout_kernel.add_dropped_(dx, x, 0.05, seed), moved * 3 // 2),
        ):
            ms = graph_ms(fn, reps)
            rows.append(dict(shape=f"{TOKENS}x{width}", kernel=label, ms=ms, gb_per_s=traffic / ms / 1e6))
    return rows


def attention_rows(reps: int) -> list[dict]:
    """SDPA forward + backward of one Llama-8B layer's attention (32 query heads, 8 KV heads, d 128, causal), as
    transformers' sdpa interface calls it (GQA in the kernel), for the input layouts and dtypes the two paths give it."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, kv_heads, dim = 32, 8, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []

    def inputs(layout: str, qk_dtype: torch.dtype, batch: int = 1):
        def make(h):
            if layout == "bshd":  # projections viewed as (batch, seq, heads, d), transposed: transformers' layout
                t = torch.randn(batch, TOKENS, h, dim, device="cuda", generator=g).transpose(1, 2)
            else:
                t = torch.randn(batch, h, TOKENS, dim, device="cuda", generator=g)
            return t
        q, k, v = make(heads).to(qk_dtype), make(kv_heads).to(qk_dtype), make(kv_heads).to(torch.bfloat16)
        return [t.detach().requires_grad_(True) for t in (q, k, v)]

    cases = [(layout, qk_dtype, backend, 1) for layout in ("bshd", "bhsd") for qk_dtype in (torch.bfloat16, torch.float32)
             for backend in ("default", "flash", "cudnn")]
    cases += [("bshd", qk_dtype, "default", 2) for qk_dtype in (torch.bfloat16, torch.float32)]
    for layout, qk_dtype, backend, batch in cases:
        q, k, v = inputs(layout, qk_dtype, batch)
        grad = torch.randn(batch, heads, TOKENS, dim, device="cuda", dtype=torch.bfloat16, generator=g)
        chosen = {"flash": [SDPBackend.FLASH_ATTENTION], "cudnn": [SDPBackend.CUDNN_ATTENTION],
                  "efficient": [SDPBackend.EFFICIENT_ATTENTION]}.get(backend)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if chosen:
                    with sdpa_kernel(chosen):
                        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                else:
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            torch.autograd.grad(out, (q, k, v), grad)
        try:
            eager = eager_ms(step, 20)
            ms = graph_ms(step, 5)
        except RuntimeError as exc:
            rows.append(dict(layout=layout, qk_dtype=str(qk_dtype), backend=backend, batch=batch,
                             error=str(exc)[:120]))
            continue
        flops = batch * 3.5 * 2 * 2 * TOKENS * TOKENS * dim * heads / 2  # fwd + 2.5x fwd backward, causal half
        rows.append(dict(layout=layout, qk_dtype=str(qk_dtype), backend=backend, batch=batch, ms=ms,
                         eager_ms=eager, tflops=flops / ms / 1e9))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels_gpu.py needs a CUDA device")
    started = time.time()
    dequant = dequant_rows(args.reps)
    print(f"\nNF4 dequantization of one Llama-8B decoder layer (7 weights, {sum(a * b for a, b in LAYER.values()) / 1e6:.0f}M "
          "params), CUDA-graph replay; outputs bit-identical")
    print(f"{'kernel':32} {'ms/layer':>9} {'GB/s':>7} {'vs bnb':>7}")
    for r in dequant:
        print(f"{r['kernel']:32} {r['ms_per_layer']:9.4f} {r['gb_per_s']:7.0f} {r['vs_baseline']:7.2f}")
    dropout = dropout_rows(args.reps)
    print(f"\nDropout kernel against plain memory traffic ({TOKENS} tokens, bf16), CUDA-graph replay")
    print(f"{'shape':12} {'kernel':24} {'ms':>8} {'GB/s':>7}")
    for r in dropout:
        print(f"{r['shape']:12} {r['kernel']:24} {r['ms']:8.4f} {r['gb_per_s']:7.0f}")
    attention = attention_rows(args.reps)
    print(f"\nSDPA forward + backward, one layer's attention ({TOKENS} tokens, 32/8 heads, d 128, causal, GQA), graph replay")
    print(f"{'q/k layout':10} {'q/k dtype':16} {'backend':10} {'batch':>5} {'ms':>8} {'TFLOP/s':>8} {'eager ms':>9}")
    for r in attention:
        tail = f"{r['ms']:8.3f} {r['tflops']:8.0f} {r['eager_ms']:9.3f}" if "ms" in r else r["error"]
        print(f"{r['layout']:10} {r['qk_dtype']:16} {r['backend']:10} {r['batch']:5} {tail}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, host=platform.machine(),
                  date=time.strftime("%Y-%m-%d", time.gmtime(started)), reps=args.reps, dequant=dequant,
                  dropout=dropout, attention=attention)
    (args.out / "kernels_gpu.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
