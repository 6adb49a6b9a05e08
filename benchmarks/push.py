"""Benchmark: `adapters push` of an adapter on the embedded model, before (a git commit) and after (this tree).

Both sides run the same script in their own subprocess, each with its own sources first on
PYTHONPATH, its own registry (LORAFLEET_HOME) and its own fingerprint cache (a LORAFLEET_CACHE whose
`models/` links to the shared converted model). Each side:

1. builds 2 × `--pushes` + 1 distinct artifacts with its own manifest code (PEFT LoRA, rank 16 on all
   seven linear projections of SmolLM2-135M-Instruct, random lora_B; untimed, in a process of its own);
2. in a fresh process, pins the registry's base and pushes one artifact as a warm-up (imports, page cache; untimed);
3. cold: empties its fingerprint cache, then times one push; repeated `--pushes` times;
4. warm: times one push with the cache as the previous push left it; repeated `--pushes` times;
5. (after only) times the base fingerprint alone, cold and warm.

A full garbage collection runs (untimed) before each timed push, so each starts from the same state.

Every timed push stores new content (no artifact is pushed twice), so each includes the copy into
the store. "cold"/"warm" is the fingerprint cache, not the OS page cache (the warm-up filled that).

Wall time is what a user waits; CPU time (the process's, hashing threads included) is steadier on
a machine shared with other jobs. Medians over `--pushes` × `--rounds` pushes; the sides alternate.

    .venv/bin/python benchmarks/push.py --baseline 548a9f8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_artifacts(out: Path, count: int) -> list[Path]:
    """`count` real artifacts on the embedded model, differing in their lora_B values (seed i)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorafleet.artifact import DatasetSpec, LoraSpec, Manifest, TrainMetrics, file_checksums, write_manifest
    from lorafleet.models import load_tokenizer, model_fingerprint, resolve_model, tokenizer_fingerprint

    base = resolve_model("smollm2-135m-instruct").path
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=RANK, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"),
    )
    tokenizer = load_tokenizer(base)
    base_fp, tokenizer_fp = model_fingerprint(base), tokenizer_fingerprint(base)
    folders = []
    for i in range(count):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.01)
        folder = out / f"artifact-{i}"
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 2.0}) + "\n")
        write_manifest(folder, Manifest(
            base_model="smollm2-135m-instruct", base_fingerprint=base_fp, tokenizer_fingerprint=tokenizer_fp,
            max_seq_length=512,
            lora=LoraSpec(r=RANK, alpha=32, dropout=0.0, target_modules=sorted(TARGETS), use_rslora=False,
                          use_dora=False, quantization="none"),
            dataset=DatasetSpec(sha256="0" * 64, train_samples=1, eval_samples=0),
            metrics=TrainMetrics(), files=file_checksums(folder), lorafleet_version="bench",
        ))
        folders.append(folder)
    return folders


def worker(pushes: int, work: Path) -> dict:
    """One side's measurements (runs inside the side's second subprocess, after build_artifacts ran in the first)."""
    from lorafleet.paths import cache_dir
    from lorafleet.registry.push import init_base, push

    artifacts = [work / "artifacts" / f"artifact-{i}" for i in range(2 * pushes + 1)]
    fingerprint_cache = cache_dir() / "fingerprints"
    init_base("smollm2-135m-instruct")
    push(artifacts[0], "bench")  # warm-up
    size = sum(p.stat().st_size for p in artifacts[0].rglob("*") if p.is_file())
    timings: dict[str, list[float]] = {"cold": [], "warm": [], "cold_cpu": [], "warm_cpu": []}
    for i, artifact in enumerate(artifacts[1:]):
        mode = "cold" if i < pushes else "warm"
        if mode == "cold":
            shutil.rmtree(fingerprint_cache, ignore_errors=True)
        gc.collect()  # every push starts from the same collector state (a full collection is not the push's cost)
        start, cpu = time.perf_counter(), time.process_time()  # process time includes the hashing threads
        push(artifact, "bench")
        timings[mode].append(time.perf_counter() - start)
        timings[f"{mode}_cpu"].append(time.process_time() - cpu)
    result = {"artifact_bytes": size, "files": len(list(artifacts[0].rglob("*"))), **timings}
    try:
        from lorafleet.fingerprints import base_fingerprints
    except ImportError:  # the code before had no weight-value fingerprint
        return result
    from lorafleet.models import resolve_model

    base = resolve_model("smollm2-135m-instruct").path
    result["base_bytes"] = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    result["fingerprint_cold"], result["fingerprint_warm"] = [], []
    for _ in range(pushes):
        shutil.rmtree(fingerprint_cache, ignore_errors=True)
        for mode in ("fingerprint_cold", "fingerprint_warm"):
            start = time.perf_counter()
            base_fingerprints(base)
            result[mode].append(time.perf_counter() - start)
    return result


def run_side(label: str, src: Path, pushes: int) -> dict:
    """Run `worker` in a subprocess with `src` first on PYTHONPATH and private LORAFLEET_HOME / LORAFLEET_CACHE."""
    from lorafleet.paths import cache_dir

    with tempfile.TemporaryDirectory(prefix=f"bench-push-{label}-") as tmp:
        work = Path(tmp)
        (work / "cache").mkdir()
        (work / "cache" / "models").symlink_to(cache_dir() / "models", target_is_directory=True)
        env = {**os.environ, "PYTHONPATH": str(src), "LORAFLEET_HOME": str(work / "home"), "LORAFLEET_CACHE": str(work / "cache")}
        prefix = f"import json, sys; from pathlib import Path; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import push as b; "
        steps = (  # building loads the model and PEFT; the pushes run in a fresh process, as a CLI push would
            f"b.build_artifacts(Path({str(work / 'artifacts')!r}), {2 * pushes + 1})",
            f"print(json.dumps(b.worker({pushes}, Path({str(work)!r}))))",
        )
        for step in steps:
            done = subprocess.run([sys.executable, "-c", prefix + step], env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{label} side failed:\n{done.stderr[-4000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="548a9f8", help="git commit of the code before (checked out in a temporary worktree)")
    parser.add_argument("--pushes", type=int, default=5, help="timed pushes per side, cache state and round")
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs, alternating")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "push_cpu.json")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from lorafleet.models import resolve_model

    resolve_model("smollm2-135m-instruct")  # convert the embedded model once, outside the timings
    with tempfile.TemporaryDirectory(prefix="bench-push-baseline-") as tmp:
        baseline_tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(baseline_tree), args.baseline], check=True)
        try:
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.rounds):  # alternate the sides, so a change in the machine's load hits both
                runs["before"].append(run_side("before", baseline_tree / "src", args.pushes))
                runs["after"].append(run_side("after", ROOT / "src", args.pushes))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)], check=False)

    modes = ("cold", "warm", "cold_cpu", "warm_cpu")
    medians = {side: {m: statistics.median(t for r in rs for t in r[m]) for m in modes} for side, rs in runs.items()}
    count = args.pushes * args.rounds
    size = runs["after"][0]["artifact_bytes"] / 2**20
    table = Table("code", "cold wall s", "cold CPU s", "warm wall s", "warm CPU s",
                  title=f"push of one SmolLM2-135M-Instruct adapter (rank {RANK}, 7 projections, {size:.1f} MiB), median of {count}")
    for side, label in (("before", f"before ({args.baseline})"), ("after", "after (this tree)")):
        table.add_row(label, *(f"{medians[side][m]:.3f}" for m in ("cold", "cold_cpu", "warm", "warm_cpu")))
    table.add_row("ratio after / before", *(f"{medians['after'][m] / medians['before'][m]:.2f}x" for m in ("cold", "cold_cpu", "warm", "warm_cpu")))
    after = runs["after"]
    fingerprint = {m: statistics.median(t for r in after for t in r[m]) for m in ("fingerprint_cold", "fingerprint_warm")}
    gb = after[0]["base_bytes"] / 1e9
    console = Console(width=120)
    console.print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {date.today()}, load average {os.getloadavg()[0]:.1f}")
    console.print(table)
    console.print(f"base fingerprint alone ({gb:.2f} GB of weights): cold {fingerprint['fingerprint_cold']:.3f} s "
                  f"({gb / fingerprint['fingerprint_cold']:.2f} GB/s), warm {1000 * fingerprint['fingerprint_warm']:.1f} ms")
    record = {
        "date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min_at_end": os.getloadavg()[0],
        "command": f"benchmarks/push.py --baseline {args.baseline} --pushes {args.pushes} --rounds {args.rounds}",
        "model": "smollm2-135m-instruct", "rank": RANK, "targets": TARGETS, "medians_s": medians,
        "fingerprint_medians_s": fingerprint, "raw": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"raw results: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
