"""Benchmark: does the web console cost `/v1` requests anything? The serve benchmark's gateway row
(row 3 of serve.py: the same instant canned upstream, load generator and request counts), run against
the gateway before the console (a git ref, extracted to a temporary folder) and against this tree,
alternating A-B-B-A… in one invocation so that drifting machine load hits both sides alike.

    .venv/bin/python benchmarks/console_overhead.py --before a0d4113 --rounds 4

The concurrency-1 run is longer than serve.py's (3,000 requests, not 500) so that console polls land in it.

A third side runs this tree with the console watched: a logged-in client polls the Live metrics data and
the Fleet table every --poll-s seconds (1 s: three open pages' worth) during the measurement (the
console reads the request log's tail in a worker thread, on the same cores as the gateway).

Both sides authenticate the benchmark's client with an API key from the registry (`lorafleet keys`),
so the ref must have keys (the default is the keys commit the console was built on). For each run:
the added p50 at concurrency 1 (gateway minus a direct call measured just before it) and the
requests/s ceiling at concurrency 64; then the medians per side and the after/before ratios. Raw
per-run results go into --out.
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
import threading
import time
from datetime import date
from pathlib import Path

import httpx
import yaml
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from serve import ALIASES, MESSAGES, fire, free_port, registry, start, stop, wait_http  # noqa: E402

from lorafleet.models import EMBEDDED_DEFAULT, resolve_model  # noqa: E402


def extract(ref: str, dest: Path) -> Path:
    """The source tree at git `ref`, extracted into `dest` (nothing in this checkout changes)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def measure(url: str, headers: dict | None, args: argparse.Namespace) -> dict:
    body = {"model": ALIASES[0], "messages": MESSAGES, "max_tokens": 8}
    asyncio.run(fire(url, [body] * 200, 8, headers))  # warm-up
    return {"concurrency_1": asyncio.run(fire(url, [body] * args.serial_requests, 1, headers)),
            "ceiling": asyncio.run(fire(url, [body] * args.ceiling_requests, args.ceiling_concurrency, headers))}


class ConsoleWatcher(threading.Thread):
    """What people with the console's Fleet and Live metrics pages open cause: both polled every `every_s`
    (one open page polls every 3 s)."""

    def __init__(self, url: str, admin_key: str, every_s: float):
        super().__init__(daemon=True)
        self.url, self.admin_key, self.every_s = url, admin_key, every_s
        self.poll_seconds: list[float] = []  # how long each metrics poll took (reading and summarizing the log tail)
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            assert client.post("/ui/login", data={"key": self.admin_key}).status_code == 303
            while True:
                started = time.perf_counter()
                client.get("/ui/api/metrics").raise_for_status()
                self.poll_seconds.append(time.perf_counter() - started)
                client.get("/ui/fragments/fleet").raise_for_status()
                if self.stopped.wait(self.every_s):
                    return


def gateway_run(src: Path, work: Path, canned_url: str, keys: dict[str, str], args: argparse.Namespace, name: str,
                watched: bool) -> dict:
    """The direct call, then `lorafleet serve` from `src` in front of the canned upstream (with the console watched)."""
    direct = measure(f"{canned_url}/v1/chat/completions", None, args)
    port = free_port()
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"port": port, "engines": [{"url": canned_url}]}))
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
    log = work / f"{name}.log"
    gateway = start([sys.executable, "-m", "lorafleet.cli", "serve", "--config", str(config)], env, log)
    watcher = ConsoleWatcher(f"http://127.0.0.1:{port}", keys["admin"], args.poll_s) if watched else None
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", gateway, log)
        if watcher:
            watcher.start()
        through = measure(f"http://127.0.0.1:{port}/v1/chat/completions", {"Authorization": f"Bearer {keys['client']}"}, args)
    finally:
        if watcher:
            watcher.stopped.set()
            watcher.join()
        stop(gateway)
    return {"direct": direct, "lorafleet": through, "console_poll_s": watcher.poll_seconds if watcher else []}


def summary(run: dict) -> dict:
    direct, lorafleet = run["direct"], run["lorafleet"]
    return {"added_p50_ms": (lorafleet["concurrency_1"]["p50_s"] - direct["concurrency_1"]["p50_s"]) * 1000,
            "added_p95_ms": (lorafleet["concurrency_1"]["p95_s"] - direct["concurrency_1"]["p95_s"]) * 1000,
            "ceiling_rps": lorafleet["ceiling"]["requests_per_s"], "direct_ceiling_rps": direct["ceiling"]["requests_per_s"],
            "errors": lorafleet["concurrency_1"]["errors"] + lorafleet["ceiling"]["errors"], "console_polls": len(run["console_poll_s"]),
            "console_poll_max_ms": max(run["console_poll_s"], default=0) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="a0d4113", help="git ref of the gateway without the console (with API keys)")
    parser.add_argument("--rounds", type=int, default=4, help="each round runs every side once, the order reversed every other round")
    parser.add_argument("--serial-requests", type=int, default=3000, help="concurrency-1 requests per run (serve.py: 500)")
    parser.add_argument("--ceiling-requests", type=int, default=4000)
    parser.add_argument("--ceiling-concurrency", type=int, default=64)
    parser.add_argument("--poll-s", type=float, default=1.0, help="console poll interval on the watched side (a page: 3 s)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "console_overhead_cpu.json")
    args = parser.parse_args()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lorafleet-console-bench-") as tmp:
        work = Path(tmp)
        registry(work / "home", resolve_model(EMBEDDED_DEFAULT).path, ALIASES[:1], aliases=True)
        from lorafleet.registry.keys import create_key

        keys = {"client": create_key("bench", None)[1], "admin": create_key("ops", None, admin=True)[1]}
        before, after = extract(args.before, work / "before"), ROOT / "src"
        sides = {"before": (before, False), "after": (after, False), "after, console open": (after, True)}
        canned_port = free_port()
        canned_url = f"http://127.0.0.1:{canned_port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        canned = start([sys.executable, str(HERE / "serve.py"), "--canned-server", str(canned_port)], env, work / "canned.log")
        try:
            wait_http(f"{canned_url}/health", canned, work / "canned.log")
            for round_ in range(args.rounds):
                order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
                for n, side in enumerate(order):
                    src, watched = sides[side]
                    raw = gateway_run(src, work, canned_url, keys, args, f"run-{round_}-{n}", watched)
                    runs.append({"side": side, "round": round_, **summary(raw), "raw": raw})
                    print(f"round {round_} {side}: +{runs[-1]['added_p50_ms']:.2f} ms p50, {runs[-1]['ceiling_rps']:.0f} req/s,"
                          f" {len(raw['console_poll_s'])} console polls", flush=True)
        finally:
            stop(canned)
    medians = {side: {key: statistics.median(r[key] for r in runs if r["side"] == side) for key in ("added_p50_ms", "added_p95_ms", "ceiling_rps")}
               for side in sides}
    results = {"date": date.today().isoformat(), "command": " ".join(["benchmarks/console_overhead.py", *sys.argv[1:]]),
               "before_ref": args.before, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                      "platform": platform.platform(terse=True)},
               "settings": {k: v for k, v in vars(args).items() if k != "out"}, "medians": medians, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = Table("run", "added p50 / p95, concurrency 1", f"ceiling req/s (concurrency {args.ceiling_concurrency})",
                  "direct ceiling", "errors", "console polls (slowest)", title="gateway cost before / after the console (canned upstream)")
    for r in runs:
        polls = f"{r['console_polls']} ({r['console_poll_max_ms']:.0f} ms)" if r["console_polls"] else ""
        table.add_row(f"{r['side']} (round {r['round']})", f"{r['added_p50_ms']:.2f} / {r['added_p95_ms']:.2f} ms",
                      f"{r['ceiling_rps']:.0f}", f"{r['direct_ceiling_rps']:.0f}", str(r["errors"]), polls)
    for side, m in medians.items():
        table.add_row(f"[bold]{side}: median[/]", f"{m['added_p50_ms']:.2f} / {m['added_p95_ms']:.2f} ms", f"{m['ceiling_rps']:.0f}",
                      "", "", "")
    b = medians["before"]
    for side in ("after", "after, console open"):
        m = medians[side]
        table.add_row(f"[bold]{side} / before[/]", f"{m['added_p50_ms'] / b['added_p50_ms']:.2f}x / {m['added_p95_ms'] / b['added_p95_ms']:.2f}x",
                      f"{m['ceiling_rps'] / b['ceiling_rps']:.2f}x", "", "", "")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
