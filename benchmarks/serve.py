"""Benchmark: `lorafleet serve` against the seed's baselines, each row and its baseline in one run.

Rows (embedded SmolLM2-135M-Instruct; adapters: LoRA r=16 on all linear layers, random weights):
  1. fleet       --requests concurrent chat requests spread over 4 adapters, --max-tokens each (fixed length:
                 ignore_eos / min_new_tokens), through `lorafleet serve` (--replicas vLLM replicas) versus the
                 seed's pre-migration serving: FastAPI calling transformers pipeline() on a PeftModel whose
                 adapter is switched per request. requests/s, tokens/s, p50/p95 latency.
  2. load        making a new adapter servable: lorafleet (store verification + vLLM runtime load, measured as
                 first-request minus warm-request latency, and the gateway's load-time metric) versus
                 reloading base + adapter with PEFT (from_pretrained + PeftModel.from_pretrained).
  3. gateway     the gateway's own cost: the same requests to an instant canned upstream directly, through
                 lorafleet's gateway, and through the LiteLLM proxy: p50 at concurrency 1, requests/s ceiling
                 at --ceiling-concurrency.

    .venv/bin/python benchmarks/serve.py --litellm .bench/litellm-venv/bin/litellm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import aiohttp
import httpx
import psutil
import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_parts import adapter_artifact  # noqa: E402

from lorafleet.models import EMBEDDED_DEFAULT, resolve_model  # noqa: E402
from lorafleet.percentiles import percentile  # noqa: E402
from lorafleet.serve.engine import free_port  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a cat."}]
ALIASES = ["bench-a", "bench-b", "bench-c", "bench-d"]
console = Console(width=160)


# ---- processes -----------------------------------------------------------------------------------

def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 900, ok=lambda r: r.status_code == 200) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited:\n{log.read_text()[-3000:]}")
        try:
            if ok(httpx.get(url, timeout=5)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready in {timeout_s} s:\n{log.read_text()[-3000:]}")


def tree_memory(pid: int) -> dict[str, float]:
    """PSS and RSS (GiB) of a process and all its descendants."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    pss = rss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            pss, rss = pss + info.pss, rss + info.rss
        except psutil.Error:
            pass
    return {"pss_gib": round(pss / 2**30, 2), "rss_gib": round(rss / 2**30, 2), "processes": len(procs)}


# ---- load ----------------------------------------------------------------------------------------

async def fire(url: str, bodies: list[dict], concurrency: int, headers: dict | None = None) -> dict:
    """POST every body with at most `concurrency` in flight (aiohttp: the load generator shares the CPU with
    what it measures, so it should cost little); latency per request, wall time, statuses."""
    latencies: list[float] = []
    statuses: list[int] = []
    tokens = 0
    semaphore = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as client:
        async def one(body: dict) -> None:
            nonlocal tokens
            async with semaphore:
                started = time.perf_counter()
                async with client.post(url, json=body, headers=headers) as response:
                    data = await response.read()
                latencies.append(time.perf_counter() - started)
                statuses.append(response.status)
                if response.status == 200:
                    parsed = json.loads(data)
                    tokens += (parsed.get("usage") or {}).get("completion_tokens") or parsed.get("completion_tokens") or 0

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - started
    return {"requests": len(bodies), "wall_s": wall, "requests_per_s": len(bodies) / wall, "tokens_per_s": tokens / wall,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95), "errors": sum(s != 200 for s in statuses)}




# ---- rows ----------------------------------------------------------------------------------------

def registry(home: Path, base: Path, names: list[str], aliases: bool) -> dict[str, Path]:
    """Adapters built and pushed into a registry at `home`; alias NAME → NAME@v1 when `aliases`."""
    os.environ["LORAFLEET_HOME"] = str(home)
    from lorafleet.registry import service
    from lorafleet.registry.push import init_base, push

    init_base(EMBEDDED_DEFAULT)
    artifacts = {}
    for seed, name in enumerate(names):
        artifacts[name] = adapter_artifact(home.parent / "artifacts" / name, base, seed)
        push(artifacts[name], name)
        if aliases:
            service.set_alias(name, [f"{name}@v1"])
    return artifacts


@contextmanager
def running_fleet(work: Path, env: dict, replicas: int) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`lorafleet serve` with `replicas` replicas, ready; yields (url, gateway process, config path)."""
    port = free_port()
    config = work / f"fleet-{replicas}.yaml"
    config.write_text(yaml.safe_dump({"port": port, "replicas": replicas, "kv_cache_gib": 1}))
    log = work / f"gateway-{replicas}.log"
    gateway = start([sys.executable, "-m", "lorafleet.cli", "serve", "--config", str(config)], env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health/ready", gateway, log, ok=lambda r: r.status_code == 200 and r.json()["replicas_healthy"] == replicas)
        yield url, gateway, config
    finally:
        stop(gateway)


def fleet_row(work: Path, env: dict, args: argparse.Namespace) -> dict:
    """Rows 1 and 2 on lorafleet's side: a real fleet; chat load over 4 aliases, then cold loads of new versions."""
    with running_fleet(work, env, args.replicas) as (url, gateway, config):
        chat = f"{url}/v1/chat/completions"
        asyncio.run(fire(chat, [{"model": a, "messages": MESSAGES, "max_tokens": 4} for a in ALIASES], 4))  # warm-up: loads
        bodies = [{"model": ALIASES[i % 4], "messages": MESSAGES, "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0}
                  for i in range(args.requests)]
        result = asyncio.run(fire(chat, bodies, args.requests))
        result["memory"] = tree_memory(gateway.pid)
        result["engine_command"] = subprocess.run([sys.executable, "-m", "lorafleet.cli", "serve", "--config", str(config),
                                                   "--print-engine-command"], env=env, capture_output=True, text=True).stdout
        cold, warm = [], []
        before = load_seconds(url)
        for name in [f"load-{i}" for i in range(args.load_repeats)]:  # one at a time, on an idle fleet
            body = {"model": f"{name}@v1", "messages": MESSAGES, "max_tokens": 1}
            cold.append(asyncio.run(fire(chat, [body], 1))["p50_s"])
            warm.append(asyncio.run(fire(chat, [body] * 3, 1))["p50_s"])
        after = load_seconds(url)
        result["load"] = {"cold_s": cold, "warm_s": warm, "cold_minus_warm_s": [c - w for c, w in zip(cold, warm)],
                          "engine_load_mean_s": (after[0] - before[0]) / (after[1] - before[1])}
        return result


def load_seconds(url: str) -> tuple[float, float]:
    """The gateway's lorafleet_adapter_load_seconds (sum, count): its timing of each engine load call."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    total = sum(float(line.split()[-1]) for line in lines if line.startswith("lorafleet_adapter_load_seconds_sum"))
    count = sum(float(line.split()[-1]) for line in lines if line.startswith("lorafleet_adapter_load_seconds_count"))
    return total, count


def memory_row(work: Path, env: dict, replicas: int) -> dict:
    """Memory of a fleet of `replicas` after one request per alias (PSS counts shared pages once)."""
    with running_fleet(work, env, replicas) as (url, gateway, _):
        asyncio.run(fire(f"{url}/v1/chat/completions", [{"model": a, "messages": MESSAGES, "max_tokens": 4} for a in ALIASES], 4))
        return tree_memory(gateway.pid)


def baseline_row(work: Path, env: dict, artifacts: dict[str, Path], base: Path, args: argparse.Namespace) -> dict:
    port = free_port()
    log = work / "baseline.log"
    spec = json.dumps({name: str(path) for name, path in artifacts.items()})
    server = start([sys.executable, str(Path(__file__).resolve()), "--baseline-server", str(port), spec], env, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/docs", server, log)
        url = f"http://127.0.0.1:{port}/generate"
        names = list(artifacts)
        asyncio.run(fire(url, [{"adapter": n, "messages": MESSAGES, "max_tokens": 2} for n in names], 1))
        bodies = [{"adapter": names[i % 4], "messages": MESSAGES, "max_tokens": args.max_tokens} for i in range(args.requests)]
        result = asyncio.run(fire(url, bodies, args.requests))
        result["memory"] = tree_memory(server.pid)
        return result
    finally:
        stop(server)


def peft_reload_row(base: Path, artifacts: list[Path]) -> dict:
    """The seed's cold start: load the base model and the adapter with PEFT, as a restart would.

    Load only: a first generate() here measured 1 to 17 s on the shared 2-core machine (OpenMP threads
    waiting on each other while other processes held the cores), which says nothing about loading.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loads = []
    for artifact in artifacts:
        started = time.perf_counter()
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), artifact)
        loads.append(time.perf_counter() - started)
        del model
    return {"load_s": loads}


def gateway_row(work: Path, env: dict, args: argparse.Namespace) -> dict:
    """Row 3: canned upstream direct / through lorafleet / through LiteLLM."""
    canned_port, gw_port, lite_port = free_port(), free_port(), free_port()
    canned_url = f"http://127.0.0.1:{canned_port}"
    processes = []
    try:
        canned_log = work / "canned.log"
        canned = start([sys.executable, str(Path(__file__).resolve()), "--canned-server", str(canned_port)], env, canned_log)
        processes.append(canned)
        wait_http(f"{canned_url}/health", canned, canned_log)
        key = "sk-bench-0123456789abcdef"  # both proxies authenticate their clients, as deployed
        auth = {"Authorization": f"Bearer {key}"}
        lorafleet_key = subprocess.run([sys.executable, "-m", "lorafleet.cli", "keys", "create", "--tenant", "bench", "--all"],
                                       env=env, capture_output=True, text=True, check=True).stdout.strip()
        gw_config = work / "gateway3.yaml"
        gw_config.write_text(yaml.safe_dump({"port": gw_port, "auth": "required", "engines": [{"url": canned_url}]}))
        gw_log = work / "gateway3.log"
        gateway = start([sys.executable, "-m", "lorafleet.cli", "serve", "--config", str(gw_config)], env, gw_log)
        processes.append(gateway)
        wait_http(f"http://127.0.0.1:{gw_port}/health/ready", gateway, gw_log)
        targets = {"direct": (f"{canned_url}/v1/chat/completions", None),
                   "lorafleet": (f"http://127.0.0.1:{gw_port}/v1/chat/completions", {"Authorization": f"Bearer {lorafleet_key}"})}
        if args.litellm:
            lite_config = work / "litellm.yaml"
            lite_config.write_text(yaml.safe_dump({"model_list": [{"model_name": "bench-a", "litellm_params": {
                "model": "openai/bench-a", "api_base": f"{canned_url}/v1", "api_key": "unused"}}],
                "general_settings": {"master_key": key}}))
            lite_log = work / "litellm.log"
            lite_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            lite = start([args.litellm, "--config", str(lite_config), "--port", str(lite_port), "--num_workers", "1"], lite_env, lite_log)
            processes.append(lite)
            wait_http(f"http://127.0.0.1:{lite_port}/health/liveliness", lite, lite_log, timeout_s=300)
            targets["litellm"] = (f"http://127.0.0.1:{lite_port}/v1/chat/completions", auth)
        body = {"model": "bench-a", "messages": MESSAGES, "max_tokens": 8}
        results = {}
        for name, (url, headers) in targets.items():
            asyncio.run(fire(url, [body] * 200, 8, headers))  # warm-up (and the adapter "load" on the canned engine)
            serial = asyncio.run(fire(url, [body] * args.serial_requests, 1, headers))
            ceiling = asyncio.run(fire(url, [body] * args.ceiling_requests, args.ceiling_concurrency, headers))
            results[name] = {"concurrency_1": serial, "ceiling": ceiling}
        return results
    finally:
        for process in reversed(processes):
            stop(process)


# ---- main ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,3", help="which rows to run (4: memory of 1- and 2-replica fleets)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--load-repeats", type=int, default=5)
    parser.add_argument("--serial-requests", type=int, default=500)
    parser.add_argument("--ceiling-requests", type=int, default=4000)
    parser.add_argument("--ceiling-concurrency", type=int, default=64)
    parser.add_argument("--litellm", help="the `litellm` executable of a separate venv (row 3's third column)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_cpu.json")
    args = parser.parse_args()
    rows = {int(r) for r in args.rows.split(",")}
    base = resolve_model(EMBEDDED_DEFAULT).path
    results: dict = {"date": date.today().isoformat(), "command": " ".join(sys.argv), "machine": machine(), "settings": vars(args) | {"out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-") as tmp:
        work = Path(tmp)
        artifacts = registry(work / "home", base, ALIASES, aliases=True)
        load_artifacts = [adapter_artifact(work / "artifacts" / f"load-{i}", base, 100 + i) for i in range(args.load_repeats)]
        from lorafleet.registry.push import push

        for i, artifact in enumerate(load_artifacts):
            push(artifact, f"load-{i}")
        env = {**os.environ, "LORAFLEET_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
        if rows & {1, 2}:
            console.print("[bold]rows 1-2: lorafleet fleet[/]")
            results["fleet"] = fleet_row(work, env, args)
        if 1 in rows:
            console.print("[bold]row 1: seed baseline (FastAPI + pipeline + PEFT set_adapter)[/]")
            results["baseline"] = baseline_row(work, env, artifacts, base, args)
        if 2 in rows:
            console.print("[bold]row 2: PEFT reload[/]")
            results["peft_reload"] = peft_reload_row(base, load_artifacts)
        if 3 in rows:
            console.print("[bold]row 3: gateway cost[/]")
            results["gateway"] = gateway_row(work, env, args)
        if 4 in rows:
            console.print("[bold]memory of 1 and 2 replicas[/]")
            results["memory"] = {str(n): memory_row(work, env, n) for n in (1, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    for local, shown in ((str(base), "<embedded model folder>"), (sys.executable, "python"), (str(HERE.parent) + "/", "")):
        text = text.replace(local, shown)  # results are committed: no local machine paths
    args.out.write_text(text)
    print_tables(results)


def machine() -> dict:
    import torch
    import vllm

    return {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "vllm": vllm.__version__}


def print_tables(r: dict) -> None:
    table = Table(title="lorafleet serve benchmarks")
    for column in ("row", "lorafleet", "baseline", "ratio"):
        table.add_column(column)
    if "fleet" in r and "baseline" in r:
        f, b = r["fleet"], r["baseline"]
        table.add_row("1. requests/s", f"{f['requests_per_s']:.2f}", f"{b['requests_per_s']:.2f}", f"{f['requests_per_s'] / b['requests_per_s']:.1f}x")
        table.add_row("1. tokens/s", f"{f['tokens_per_s']:.1f}", f"{b['tokens_per_s']:.1f}", f"{f['tokens_per_s'] / b['tokens_per_s']:.1f}x")
        table.add_row("1. p50 / p95 latency s", f"{f['p50_s']:.2f} / {f['p95_s']:.2f}", f"{b['p50_s']:.2f} / {b['p95_s']:.2f}", "")
        table.add_row("1. memory PSS GiB", f"{f['memory']['pss_gib']}", f"{b['memory']['pss_gib']}", "")
    if "fleet" in r and "peft_reload" in r:
        engine = r["fleet"]["load"]["engine_load_mean_s"]
        servable = statistics.median(r["fleet"]["load"]["cold_minus_warm_s"])
        peft = statistics.median(r["peft_reload"]["load_s"])
        table.add_row("2. load an adapter, s: engine runtime load / PEFT base + adapter", f"{engine:.3f}", f"{peft:.2f}",
                      f"{peft / engine:.1f}x faster")
        table.add_row("2. ... lorafleet's whole first use (verify + load), first minus warm answer", f"{servable:.3f}", f"{peft:.2f}",
                      f"{peft / servable:.1f}x faster")
    if "gateway" in r:
        g = r["gateway"]
        direct = g["direct"]["concurrency_1"]["p50_s"]
        for name in ("lorafleet", "litellm"):
            if name in g:
                added = (g[name]["concurrency_1"]["p50_s"] - direct) * 1000
                table.add_row(f"3. {name}: added p50 at concurrency 1", f"{added:.2f} ms", f"direct p50 {direct * 1000:.2f} ms", "")
                table.add_row(f"3. {name}: requests/s ceiling", f"{g[name]['ceiling']['requests_per_s']:.0f}",
                              f"direct {g['direct']['ceiling']['requests_per_s']:.0f}", "")
        if "litellm" in g:
            ratio = g["lorafleet"]["ceiling"]["requests_per_s"] / g["litellm"]["ceiling"]["requests_per_s"]
            table.add_row("3. ceiling lorafleet / LiteLLM", "", "", f"{ratio:.1f}x")
    for n, memory in r.get("memory", {}).items():
        table.add_row(f"memory, {n} replica(s) + gateway", f"PSS {memory['pss_gib']} GiB (RSS {memory['rss_gib']})", "", "")
    console.print(table)


def serve_part(kind: str, port: int, spec: str | None) -> None:
    import uvicorn

    from serve_parts import baseline_app, canned_app

    if kind == "--baseline-server":
        app = baseline_app(resolve_model(EMBEDDED_DEFAULT).path, {k: Path(v) for k, v in json.loads(spec or "{}").items()})
    else:
        app = canned_app
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] in ("--baseline-server", "--canned-server"):
        serve_part(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        main()
