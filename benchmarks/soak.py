"""Soak: `lorafleet serve` (keys required, --replicas vLLM replicas) under steady mixed traffic for --minutes, with
alias changes during the run — a canary of a freshly pushed version (so replicas load it), its promotion, a
rollback — on loopback only. Per minute: requests, unexpected errors, p50/p95 latency; gateway memory (RSS of
the gateway process itself, not the replicas) at start and end, sampled every 10 s.

Traffic: --concurrency clients in a loop, each request to one of 4 aliases at random, half of them streamed,
--max-tokens tokens each. An unexpected error is any answer that is not a 200 with a complete body (a stream
must end in [DONE] with no error event). Adapters: LoRA r=16 on all linear layers, random weights (as in
benchmarks/serve.py: serving speed does not depend on the values).

    .venv/bin/python benchmarks/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import aiohttp
import psutil
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve import ALIASES, MESSAGES, machine, registry, running_fleet  # noqa: E402
from serve_parts import adapter_artifact  # noqa: E402

from lorafleet.models import EMBEDDED_DEFAULT, resolve_model  # noqa: E402
from lorafleet.percentiles import percentile  # noqa: E402

console = Console(width=160)


async def client_loop(url: str, headers: dict, stop_at: float, max_tokens: int, rng: random.Random, out: list[dict]) -> None:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        while time.monotonic() < stop_at:
            stream = rng.random() < 0.5
            body = {"model": rng.choice(ALIASES), "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream,
                    "user": f"user-{rng.randrange(1000)}"}
            started = time.monotonic()
            status, problem = 0, None
            try:
                async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                    status, data = response.status, await response.read()
                if status != 200:
                    problem = data[:200].decode("utf-8", "replace")
                elif stream and (not data.rstrip().endswith(b"data: [DONE]") or b'"error"' in data):
                    problem = "stream ended without [DONE] or with an error event"
                elif not stream and not json.loads(data)["choices"][0]["message"]["content"]:
                    problem = "empty answer"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            out.append({"t": started, "latency_s": time.monotonic() - started, "status": status, "stream": stream,
                        "model": body["model"], "error": problem})


async def changes(home: Path, env: dict, artifacts: list[Path], start: float, stop_at: float, every_s: float, log: list[dict]) -> None:
    """Every `every_s`: canary a newly pushed version of bench-a at 20 % beside bench-a@v1, then promote it, then roll
    back (to the canary); repeat with the next version."""
    cycle, ref = 0, "bench-a@v1"
    while time.monotonic() + every_s < stop_at:
        await asyncio.sleep(every_s)
        step = cycle % 3
        if step == 0 and cycle // 3 >= len(artifacts):
            step = 3  # no version left to push: hold the routing
        if step == 0:
            pushed = await asyncio.to_thread(run_cli, env, "adapters", "push", str(artifacts[cycle // 3]), "--name", "bench-a", "--json")
            ref = json.loads(pushed)["ref"]
            action = ["alias", "set", "bench-a", "bench-a@v1=80", f"{ref}=20"]
        elif step == 1:
            action = ["promote", "bench-a", ref]
        elif step == 2:
            action = ["rollback", "bench-a"]
        else:
            cycle += 1
            continue
        await asyncio.to_thread(run_cli, env, "adapters", *action)
        log.append({"t": time.monotonic() - start, "change": " ".join(action)})
        console.print(f"{time.monotonic() - start:6.0f} s  {' '.join(action)}", highlight=False)
        cycle += 1


def run_cli(env: dict, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "lorafleet.cli", *args], env=env, capture_output=True, text=True, check=True).stdout


async def memory_samples(pid: int, start: float, stop_at: float, samples: list[dict]) -> None:
    process = psutil.Process(pid)
    while time.monotonic() < stop_at:
        samples.append({"t": time.monotonic() - start, "rss_mib": round(process.memory_info().rss / 2**20, 1)})
        await asyncio.sleep(10)


async def soak(url: str, gateway_pid: int, headers: dict, env: dict, home: Path, artifacts: list[Path], args: argparse.Namespace) -> dict:
    start = time.monotonic()
    stop_at = start + args.minutes * 60
    requests: list[dict] = []
    changed: list[dict] = []
    memory: list[dict] = []
    rng = random.Random(args.seed)
    await asyncio.gather(
        *(client_loop(url, headers, stop_at, args.max_tokens, random.Random(rng.random()), requests) for _ in range(args.concurrency)),
        changes(home, env, artifacts, start, stop_at, args.change_every, changed),
        memory_samples(gateway_pid, start, stop_at, memory),
    )
    memory.append({"t": time.monotonic() - start, "rss_mib": round(psutil.Process(gateway_pid).memory_info().rss / 2**20, 1)})
    minutes = []
    for minute in range(int(-(-args.minutes // 1))):
        rows = [r for r in requests if minute * 60 <= r["t"] - start < (minute + 1) * 60]
        latencies = [r["latency_s"] for r in rows if not r["error"]]
        errors = [r for r in rows if r["error"]]
        minutes.append({"minute": minute + 1, "requests": len(rows), "streamed": sum(r["stream"] for r in rows), "errors": len(errors),
                        "error_rate": round(len(errors) / len(rows), 4) if rows else None,
                        "p50_s": round(percentile(latencies, 50), 3) if latencies else None,
                        "p95_s": round(percentile(latencies, 95), 3) if latencies else None,
                        "error_samples": sorted({e["error"] for e in errors})[:3]})
    return {"minutes": minutes, "changes": changed, "gateway_rss_mib": memory,
            "total": {"requests": len(requests), "errors": sum(bool(r["error"]) for r in requests),
                      "rss_start_mib": memory[0]["rss_mib"], "rss_end_mib": memory[-1]["rss_mib"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--change-every", type=float, default=30, help="seconds between alias changes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "soak_cpu.json")
    args = parser.parse_args()
    base = resolve_model(EMBEDDED_DEFAULT).path
    results: dict = {"date": date.today().isoformat(), "command": " ".join(sys.argv), "machine": machine(),
                     "settings": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="lorafleet-soak-") as tmp:
        work = Path(tmp)
        home = work / "home"
        registry(home, base, ALIASES, aliases=True)
        changes_needed = int(args.minutes * 60 // args.change_every // 3) + 1
        artifacts = [adapter_artifact(work / "artifacts" / f"bench-a-{i}", base, 200 + i) for i in range(changes_needed)]
        env = {**os.environ, "LORAFLEET_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        token = run_cli(env, "keys", "create", "--tenant", "soak", "--all").strip()
        with running_fleet(work, env, args.replicas) as (url, gateway, _):
            console.print(f"[bold]soak: {args.minutes:g} min, {args.concurrency} clients, {args.replicas} replicas[/]")
            results["soak"] = asyncio.run(soak(url, gateway.pid, {"Authorization": f"Bearer {token}"}, env, home, artifacts, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    for local, shown in ((str(base), "<embedded model folder>"), (sys.executable, "python"), (str(HERE.parent) + "/", "")):
        text = text.replace(local, shown)  # results are committed: no local machine paths
    args.out.write_text(text)
    print_table(results["soak"])


def print_table(soak: dict) -> None:
    table = Table(title=f"soak: {soak['total']['requests']} requests, {soak['total']['errors']} unexpected errors, gateway RSS "
                        f"{soak['total']['rss_start_mib']:.0f} → {soak['total']['rss_end_mib']:.0f} MiB")
    for column in ("minute", "requests", "streamed", "errors", "error rate", "p50", "p95"):
        table.add_column(column, justify="right")
    for m in soak["minutes"]:
        table.add_row(str(m["minute"]), str(m["requests"]), str(m["streamed"]), str(m["errors"]),
                      "-" if m["error_rate"] is None else f"{m['error_rate']:.2%}",
                      "-" if m["p50_s"] is None else f"{m['p50_s']:.2f} s", "-" if m["p95_s"] is None else f"{m['p95_s']:.2f} s")
    console.print(table)


if __name__ == "__main__":
    main()
