"""Benchmark: does the web console cost `/v1` requests anything? The serve benchmark's gateway row
(row 3 of serve.py: an instant canned upstream, called directly and through `lorafleet serve`) run
against the gateway before the console (a git ref, extracted to a temporary folder) and against this
tree, alternating A-B-B-A… in one invocation so drifting machine load hits both alike.

    .venv/bin/python benchmarks/console_overhead.py --before b52fa3a --rounds 2

Prints the added p50 at concurrency 1 (gateway minus direct, same run) and the requests/s ceiling
of each run, their medians per side, and the after/before ratios; raw per-run JSON from serve.py goes
into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def extract(ref: str, dest: Path) -> Path:
    """The source tree at git `ref`, extracted into `dest` (nothing in this checkout changes)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def gateway_row(src: Path, out: Path, args: argparse.Namespace) -> dict:
    """serve.py --rows 3 with `src` first on the path (the gateway subprocess inherits it)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, str(HERE / "serve.py"), "--rows", "3", "--load-repeats", "1", "--serial-requests",
                    str(args.serial_requests), "--ceiling-requests", str(args.ceiling_requests), "--out", str(out)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["gateway"]


def summary(gateway: dict) -> dict:
    direct, lorafleet = gateway["direct"], gateway["lorafleet"]
    return {"added_p50_ms": (lorafleet["concurrency_1"]["p50_s"] - direct["concurrency_1"]["p50_s"]) * 1000,
            "ceiling_rps": lorafleet["ceiling"]["requests_per_s"], "direct_ceiling_rps": direct["ceiling"]["requests_per_s"],
            "errors": lorafleet["concurrency_1"]["errors"] + lorafleet["ceiling"]["errors"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="b52fa3a", help="git ref of the gateway without the console")
    parser.add_argument("--rounds", type=int, default=2, help="A-B-B-A rounds: each round runs both sides once")
    parser.add_argument("--serial-requests", type=int, default=500)
    parser.add_argument("--ceiling-requests", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "console_overhead_cpu.json")
    args = parser.parse_args()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lorafleet-console-bench-") as tmp:
        sides = {"before": extract(args.before, Path(tmp)), "after": ROOT / "src"}
        for round_ in range(args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for side in order:
                gateway = gateway_row(sides[side], Path(tmp) / "run.json", args)
                runs.append({"side": side, "round": round_, **summary(gateway), "raw": gateway})
                print(f"round {round_} {side}: {runs[-1]['added_p50_ms']:.2f} ms added p50, {runs[-1]['ceiling_rps']:.0f} req/s", flush=True)
    medians = {side: {key: statistics.median(r[key] for r in runs if r["side"] == side) for key in ("added_p50_ms", "ceiling_rps")}
               for side in ("before", "after")}
    results = {"date": date.today().isoformat(), "command": " ".join(["benchmarks/console_overhead.py", *sys.argv[1:]]),
               "before_ref": args.before, "machine": machine(), "runs": runs, "medians": medians}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = Table("run", "added p50, concurrency 1", "ceiling req/s (concurrency 64)", "direct ceiling", "errors",
                  title="gateway cost before / after the console (canned upstream)")
    for r in runs:
        table.add_row(f"{r['side']} (round {r['round']})", f"{r['added_p50_ms']:.2f} ms", f"{r['ceiling_rps']:.0f}",
                      f"{r['direct_ceiling_rps']:.0f}", str(r["errors"]))
    for side in ("before", "after"):
        table.add_row(f"[bold]{side}: median[/]", f"{medians[side]['added_p50_ms']:.2f} ms", f"{medians[side]['ceiling_rps']:.0f}", "", "")
    table.add_row("[bold]after / before[/]", f"{medians['after']['added_p50_ms'] / medians['before']['added_p50_ms']:.2f}x",
                  f"{medians['after']['ceiling_rps'] / medians['before']['ceiling_rps']:.2f}x", "", "")
    Console(width=140).print(table)


def machine() -> dict:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(terse=True)}


if __name__ == "__main__":
    main()
