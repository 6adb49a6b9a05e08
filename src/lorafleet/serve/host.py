"""Detect the facts about this machine that engine flags depend on (serve.flags.HostInfo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lorafleet.serve.flags import HostInfo

_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def detect_host() -> HostInfo:
    """Cores this process may use, native CPU bf16, memory, and CUDA devices (torch, when importable)."""
    cpu_ids = tuple(sorted(os.sched_getaffinity(0)))
    cuda_devices, cuda_bf16 = _cuda()
    return HostInfo(cpu_ids=cpu_ids, cpu_bf16=_cpu_bf16(), memory_gib=_memory_gib(), cuda_devices=cuda_devices, cuda_bf16=cuda_bf16)


def base_max_positions(model_path: Path) -> int:
    """The base model's context limit from its config.json (max_position_embeddings)."""
    config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    return int(config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings") or 2048)


def _cpu_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_CPU_BF16_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def _memory_gib() -> float:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8.0
    return pages * page_size / 2**30


def _cuda() -> tuple[int, bool]:
    # Only a host with the NVIDIA driver pays for importing torch here (seconds, hundreds of MB).
    if not Path("/proc/driver/nvidia/gpus").is_dir():
        return 0, False
    try:
        import torch
    except ImportError:
        return 0, False
    if not torch.cuda.is_available():
        return 0, False
    return torch.cuda.device_count(), bool(torch.cuda.is_bf16_supported())
