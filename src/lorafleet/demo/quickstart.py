"""`lorafleet demo`: from raw support tickets to a served adapter measured against the base model, on a CPU.

    base model → generate ticket data → prepare → train v1 (a quick first version) → train v2 (the
    full triage recipe) → push both, alias `support` at v1=90 / v2=10 → serve (vLLM replicas +
    gateway) → canary traffic → promote v2 → eval: base model + format instructions versus `support`
    on the held-out tickets → ab-report of the canary traffic → stop (or keep serving)

Why v1 is the cheap one: the alias that is promoted and evaluated should be the best adapter, so
the full recipe is the canary that gets promoted, and the version it replaces is a short run of the
same recipe (configs/demo.yaml: fewer steps, another seed).

Everything lives under one folder (default `demo-output/`). The generated data, the prepared
dataset and the trained artifacts are reused by the next run when their inputs are unchanged
(`--fresh` starts over); the registry (`home/`) is rebuilt on every run, which costs seconds and
keeps the versions numbered v1 and v2 and the request log to this run's traffic.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from lorafleet.config import TrainConfig, load_train_config
from lorafleet.data.prepare import PrepareOptions
from lorafleet.demo import build, traffic
from lorafleet.demo.fleet import RunningFleet, build_registry
from lorafleet.demo.steps import StepLog, StepTime
from lorafleet.demo.triage import FORMAT_INSTRUCTIONS
from lorafleet.eval.recording import record_report
from lorafleet.eval.render import summary_table
from lorafleet.eval.report import EvalReport
from lorafleet.eval.runner import Target
from lorafleet.models import EMBEDDED_DEFAULT, resolve_model
from lorafleet.serve.abreport import VersionStats
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.engine import free_port

ALIAS = "support"
STEPS = 12
EXAMPLE_TICKET = "Hi, I was charged twice for my subscription this month and need one of the payments refunded."


class DemoOptions(BaseModel):
    """Everything `lorafleet demo` can be told."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(Path("demo-output"), description="folder for everything the demo writes, its registry included")
    recipe: Path = Field(Path("configs/triage.yaml"), description="train config of v2, the adapter that is promoted")
    first_version: Path = Field(Path("configs/demo.yaml"), description="train config of v1, the quick first version")
    fresh: bool = Field(False, description="delete `out` first instead of reusing its data, dataset and adapters")
    keep_serving: bool = Field(False, description="leave the fleet up at the end until Ctrl-C")
    port: int = Field(0, ge=0, le=65535, description="gateway port (0 = any free port)")
    replicas: int = Field(1, ge=1, description="vLLM replicas to start")
    kv_cache_gib: float = Field(
        1.0, gt=0, description="KV cache per replica; 1 GiB holds the demo's 8 concurrent requests many times over, "
        "and the derived default (a share of host memory) fails on a machine whose memory others are using"
    )
    seed: int = Field(0, description="seed of the generated tickets")
    train_tickets: int = Field(1000, ge=8, description="training conversations to generate")
    dev_tickets: int = Field(200, ge=1, description="held-out tickets to generate and evaluate on")
    max_seq_length: int = Field(
        1024, ge=64, description="prepare's length limit; it becomes the served context, which must hold the base model's format instructions"
    )
    max_steps: int | None = Field(None, ge=1, description="cap both versions' training steps (a shortened demo)")
    canary_requests: int = Field(40, ge=1, description="requests sent to the alias while the 90/10 split is live")
    startup_timeout_s: float = Field(900, gt=0, description="how long the replicas may take to become healthy")


@dataclass(frozen=True)
class DemoResult:
    """What a demo run produced, for the caller (and the tests) to check."""

    refs: list[str]
    eval_report: EvalReport
    eval_path: Path
    canary_seen: dict[str, int]
    ab_stats: list[VersionStats]
    ab_path: Path
    steps: list[StepTime]


def run_length(config: TrainConfig) -> str:
    """How long a version trains, as its config says it: a step budget, or whole epochs (counted in steps by train)."""
    if config.max_steps:
        return f"{config.max_steps} steps"
    return f"{config.epochs} epoch" + ("" if config.epochs == 1 else "s")


def run_demo(options: DemoOptions, console: Console) -> DemoResult:
    """Run every step into `options.out`; the fleet is stopped on return unless keep_serving (then on Ctrl-C).

    Raises what the library raises for bad input (a config that does not validate, a port in use, …).
    """
    out = options.out.resolve()
    if options.fresh:
        shutil.rmtree(out, ignore_errors=True)
    log = StepLog(console, STEPS)
    configs = [version_config(options.first_version, options), version_config(options.recipe, options)]

    with log.step("base model", f"resolve {EMBEDDED_DEFAULT} (converted once from its GGUF file into the model cache)"):
        console.print(f"ready at {resolve_model(EMBEDDED_DEFAULT).path}", highlight=False, markup=False)
    with log.step("generate data", f"support-ticket triage data, seed {options.seed}: several chat formats, a few broken lines"):
        summary = build.generate_data(out / "data", options.seed, options.train_tickets, options.dev_tickets)
        build.print_data_summary(summary, out / "data", console)
    with log.step("prepare", "validate every line, apply the chat template, mask the loss to the answers, split") as step:
        prepare = PrepareOptions(max_seq_length=options.max_seq_length, seed=options.seed)
        report, step.reused = build.prepare_cached(build.train_files(out / "data", summary), out / "prepared", prepare)
        build.print_prepare(report, console)
    artifacts = []
    for number, (config, source) in enumerate(zip(configs, [options.first_version, options.recipe]), start=1):
        with log.step(f"train v{number}", f"LoRA on the CPU with {source}: {run_length(config)}, seed {config.seed}") as step:
            artifact = out / "artifacts" / f"{ALIAS}-v{number}"
            manifest, step.reused = build.train_cached(out / "prepared", artifact, config)
            build.print_trained(artifact.name, manifest, console)
            artifacts.append(artifact)

    home = out / "home"
    shutil.rmtree(home, ignore_errors=True)
    os.environ["LORAFLEET_HOME"] = str(home)  # the demo's own registry, store and logs, never the user's
    with log.step("registry", f"push both versions, route alias {ALIAS!r} 90/10 between v1 and the v2 canary"):
        pushed, revision = build_registry(ALIAS, artifacts, FORMAT_INSTRUCTIONS)
        routes = ", ".join(f"{r.ref}={r.weight}" for r in revision.routes)
        console.print(f"pushed {', '.join(p.ref for p in pushed)}; alias {ALIAS} → {routes}", highlight=False)

    fleet_config = FleetConfig(port=options.port or free_port(), replicas=options.replicas, kv_cache_gib=options.kv_cache_gib,
                               startup_timeout_s=options.startup_timeout_s)
    fleet = RunningFleet(fleet_config)
    try:
        with log.step("serve", f"start {options.replicas} vLLM replica(s) with derived flags and the gateway (about a minute)"):
            fleet.start(options.startup_timeout_s, home / "logs")
            console.print(f"gateway at {fleet.url}, serving {fleet.base_name} and alias {ALIAS!r}", highlight=False)
        result = _measure(fleet, [p.ref for p in pushed], out, options, log, console)
        if options.keep_serving:
            console.rule("the fleet stays up")
            console.print(traffic.usage_snippet(fleet.url, ALIAS, EXAMPLE_TICKET), highlight=False, markup=False)
            console.print("Ctrl-C stops the gateway and its replicas.")
            fleet.wait()
    finally:
        with log.step("stop", "stop the gateway and every vLLM replica"):
            fleet.stop()
    console.print(log.table())
    return result


def _measure(fleet: RunningFleet, refs: list[str], out: Path, options: DemoOptions, log: StepLog, console: Console) -> DemoResult:
    """Canary traffic → promote → eval → ab-report, against the running fleet."""
    from lorafleet.registry import service

    dev = out / "data" / "dev.jsonl"
    with log.step("canary traffic", f"send held-out tickets to {ALIAS!r} as distinct customers while 90/10 is live"):
        cap = max(options.canary_requests * 5, 100)
        seen = traffic.send_canary_traffic(fleet.url, ALIAS, dev, refs, options.canary_requests, cap, console)
        console.print(f"{sum(seen.values())} requests answered: " + ", ".join(f"{k} {v}" for k, v in sorted(seen.items())), highlight=False)
    with log.step("promote", f"route all of {ALIAS!r} to {refs[1]} (the gateway picks it up within a second)"):
        revision = service.promote(ALIAS, refs[1])
        console.print(f"alias {ALIAS} revision {revision.revision}: " + ", ".join(f"{r.ref}={r.weight}" for r in revision.routes), highlight=False)
        fleet.wait_for_route(ALIAS, refs[1])
    with log.step("eval", f"base model with format instructions versus {ALIAS!r}, greedy, on the held-out tickets"):
        targets = [Target(model=fleet.base_name, system_prompt=FORMAT_INSTRUCTIONS), Target(model=ALIAS)]
        report = traffic.run_eval(fleet.url, dev, targets, None, console)
        eval_path = out / "eval" / "eval-report.json"
        traffic.write_eval_report(eval_path, report)
        recorded = record_report(report, dev)  # as `lorafleet eval --record`: the console's adapter page shows it
        said = ", ".join(r.ref for r in recorded) or "no version (nothing stored)"
        console.print(f"eval recorded for {said}: `lorafleet adapters show` and the console's adapter page list it", highlight=False)
        console.print(summary_table(report))
        console.print(traffic.examples_table(report, 3))
        console.print(f"full report with confusion tables: {eval_path}", highlight=False, markup=False)
    with log.step("ab-report", f"compare {ALIAS!r}'s versions on the canary traffic, from the gateway's request log"):
        fleet.flush_request_log()
        stats = traffic.canary_report(fleet.request_log, ALIAS)
        ab_path = out / "eval" / "ab-report.json"
        traffic.write_ab_report(ab_path, ALIAS, stats)
        console.print(traffic.ab_table(ALIAS, stats))
    return DemoResult(refs, report, eval_path, dict(seen), stats, ab_path, log.steps)


def version_config(path: Path, options: DemoOptions) -> TrainConfig:
    """The train config at `path`, with the options' step cap applied."""
    config = load_train_config(path)
    return config.model_copy(update={"max_steps": options.max_steps}) if options.max_steps else config
