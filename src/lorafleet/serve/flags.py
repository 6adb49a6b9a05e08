"""Engine flags, derived — never typed: a pure function of the routed adapters, the host and the config.

    --max-model-len   = the longest max_seq_length among routed adapters (the seed's pitfall: serving
                        must not allow a longer context than training saw)
    --max-lora-rank   = the smallest rank vLLM accepts that is >= the largest routed rank
    --max-loras       = the routed working set, capped by config.max_loras (vLLM preallocates a slot
                        per LoRA in every batch, so it is sized to what is routed)
    --max-cpu-loras   = config.max_cpu_loras, at least --max-loras (a host-memory cache filled on demand:
                        versions routed after start fit without a restart); the gateway unloads the
                        least recently used adapter of a replica that holds this many
    --dtype           = bfloat16 on CUDA with bf16 and on CPUs with native bf16, float16 on older CUDA,
                        float32 on other CPUs
    CPU replicas      = each bound to its own cores (VLLM_CPU_OMP_THREADS_BIND) with its own KV-cache size
    CUDA replicas     = spread over the GPUs, sharing --gpu-memory-utilization on a shared GPU
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from lorafleet.registry.checks import VLLM_MAX_LORA_RANKS, servable_max_lora_rank
from lorafleet.registry.fleet import ServedVersion
from lorafleet.serve.config import FleetConfig

VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_LORA_RANK = 16  # vLLM's own default, used when no adapter is routed yet


class EnginePlanError(ValueError):
    """A fleet this host cannot run (e.g. more CPU replicas than cores); the message says what to change."""


@dataclass(frozen=True)
class HostInfo:
    """What the flags depend on about the machine (detected by `serve.host.detect_host`)."""

    cpu_ids: tuple[int, ...]  # the cores this process may run on
    cpu_bf16: bool  # native bf16 arithmetic (AVX512-BF16 or AMX)
    memory_gib: float
    cuda_devices: int = 0
    cuda_bf16: bool = False


@dataclass(frozen=True)
class EngineFlags:
    """The flags every replica shares."""

    max_model_len: int
    max_lora_rank: int
    max_loras: int
    max_cpu_loras: int
    dtype: str
    gpu_memory_utilization: float | None = None  # CUDA only


@dataclass(frozen=True)
class ReplicaSlot:
    """Where one replica runs: its cores and KV cache on a CPU host, its GPU on a CUDA host."""

    index: int
    cpus: tuple[int, ...] = ()
    kv_cache_gib: int | None = None
    cuda_device: int | None = None


@dataclass(frozen=True)
class EnginePlan:
    """Flags + replica slots + one line per decision, printed by `serve --print-engine-command`."""

    flags: EngineFlags
    slots: tuple[ReplicaSlot, ...]
    reasons: tuple[str, ...] = field(default=())


def derive_plan(routed: list[ServedVersion], base_max_len: int, host: HostInfo, config: FleetConfig) -> EnginePlan:
    """The engine plan for `config.replicas` replicas serving the `routed` versions on `host`.

    Versions vLLM cannot serve (DoRA, rank above vLLM's largest) do not shape the flags: they fall
    back to the base model at request time, and a reason says so. Raises EnginePlanError.
    """
    reasons: list[str] = []
    servable = [v for v in routed if not v.use_dora and v.rank <= max(VLLM_MAX_LORA_RANKS)]
    for v in sorted(set(routed) - set(servable), key=lambda v: v.ref):
        reasons.append(f"{v.ref} cannot be served by vLLM (DoRA or rank {v.rank}); its traffic falls back to the base model")
    max_len = _max_model_len(servable, base_max_len, config, reasons)
    rank = _max_lora_rank(servable, reasons)
    working_set = max(1, len(servable))
    max_loras = min(working_set, config.max_loras)
    max_cpu_loras = max(max_loras, config.max_cpu_loras)
    reasons.append(
        f"--max-loras {max_loras}: {len(servable)} routed version(s), capped by max_loras={config.max_loras}; "
        f"--max-cpu-loras {max_cpu_loras}: max_cpu_loras={config.max_cpu_loras}, at least --max-loras"
    )
    dtype = _dtype(host, reasons)
    if host.cuda_devices:
        slots, utilization = _cuda_slots(host, config, reasons)
    else:
        slots, utilization = _cpu_slots(host, config, reasons), None
    flags = EngineFlags(max_len, rank, max_loras, max_cpu_loras, dtype, utilization)
    return EnginePlan(flags, slots, tuple(reasons))


def _max_model_len(servable: list[ServedVersion], base_max_len: int, config: FleetConfig, reasons: list[str]) -> int:
    if servable:
        longest = max(servable, key=lambda v: v.max_seq_length)
        if longest.max_seq_length > base_max_len:
            reasons.append(
                f"--max-model-len {base_max_len}: {longest.ref} trained at {longest.max_seq_length}, longer than the "
                f"base model's {base_max_len} positions"
            )
            return base_max_len
        reasons.append(f"--max-model-len {longest.max_seq_length}: the longest max_seq_length among routed adapters ({longest.ref})")
        return longest.max_seq_length
    chosen = min(config.max_model_len or base_max_len, base_max_len)
    reasons.append(f"--max-model-len {chosen}: no routed adapter; {'max_model_len from the config' if config.max_model_len else 'the base model'}")
    return chosen


def _max_lora_rank(servable: list[ServedVersion], reasons: list[str]) -> int:
    if not servable:
        reasons.append(f"--max-lora-rank {DEFAULT_LORA_RANK}: no routed adapter (vLLM's default)")
        return DEFAULT_LORA_RANK
    largest = max(servable, key=lambda v: v.rank)
    rank = servable_max_lora_rank(largest.rank)
    reasons.append(f"--max-lora-rank {rank}: smallest vLLM choice >= the largest routed rank {largest.rank} ({largest.ref})")
    return rank


def _dtype(host: HostInfo, reasons: list[str]) -> str:
    if host.cuda_devices:
        dtype = "bfloat16" if host.cuda_bf16 else "float16"
        reasons.append(f"--dtype {dtype}: CUDA {'with' if host.cuda_bf16 else 'without'} bf16 support")
    else:
        dtype = "bfloat16" if host.cpu_bf16 else "float32"
        reasons.append(f"--dtype {dtype}: CPU {'with' if host.cpu_bf16 else 'without'} native bf16 (AVX512-BF16/AMX)")
    return dtype


def _cpu_slots(host: HostInfo, config: FleetConfig, reasons: list[str]) -> tuple[ReplicaSlot, ...]:
    cores, n = len(host.cpu_ids), config.replicas
    reserved = config.reserved_cpus if config.reserved_cpus is not None else (1 if cores > n else 0)
    usable = cores - reserved
    if usable < n:
        raise EnginePlanError(
            f"{n} CPU replica(s) need at least {n} core(s) of their own; this host has {cores} "
            f"with {reserved} reserved (lower --replicas or reserved_cpus)"
        )
    per_replica = usable // n
    kv = config.kv_cache_gib if config.kv_cache_gib is not None else default_kv_cache_gib(host.memory_gib, n)
    kv_gib = max(1, int(kv))  # VLLM_CPU_KVCACHE_SPACE takes whole GiB
    slots = tuple(
        ReplicaSlot(i, host.cpu_ids[reserved + i * per_replica : reserved + (i + 1) * per_replica], kv_cache_gib=kv_gib)
        for i in range(n)
    )
    reasons.append(
        f"{n} CPU replica(s) × {per_replica} core(s), {reserved} core(s) left to the gateway and engine front ends; "
        f"KV cache {kv_gib} GiB each (host memory {host.memory_gib:.0f} GiB)"
    )
    return slots


def default_kv_cache_gib(memory_gib: float, replicas: int) -> int:
    """A fifth of host memory shared by the replicas, 1..16 GiB each (weights and activations need the rest)."""
    return int(min(16, max(1, memory_gib * 0.2 / replicas)))


def _cuda_slots(host: HostInfo, config: FleetConfig, reasons: list[str]) -> tuple[tuple[ReplicaSlot, ...], float]:
    n = config.replicas
    per_gpu = -(-n // host.cuda_devices)  # ceil: the most replicas any one GPU holds
    utilization = round(config.gpu_memory_utilization / per_gpu, 3)
    reasons.append(
        f"--gpu-memory-utilization {utilization}: {n} replica(s) on {host.cuda_devices} GPU(s), "
        f"up to {per_gpu} per GPU sharing {config.gpu_memory_utilization}"
    )
    return tuple(ReplicaSlot(i, cuda_device=i % host.cuda_devices) for i in range(n)), utilization


def engine_argv(flags: EngineFlags, model_path: str, served_name: str, port: int, extra: list[str]) -> list[str]:
    """The vLLM OpenAI server command for one replica (loopback only, runtime LoRA loading enabled).

    `python -m` rather than the `vllm` script: the vllm-cpu distribution's script looks up the name `vllm`.
    The API key goes in the environment (VLLM_API_KEY), where `ps` does not show it to other users.
    """
    argv = [
        sys.executable, "-m", VLLM_SERVER_MODULE,
        "--model", model_path, "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", flags.dtype, "--max-model-len", str(flags.max_model_len),
        "--enable-lora", "--max-lora-rank", str(flags.max_lora_rank),
        "--max-loras", str(flags.max_loras), "--max-cpu-loras", str(flags.max_cpu_loras),
        "--disable-uvicorn-access-log",
    ]
    if flags.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(flags.gpu_memory_utilization)]
    return argv + list(extra)


def engine_env(slot: ReplicaSlot) -> dict[str, str]:
    """Environment variables one replica needs on top of the gateway's own."""
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    if slot.cpus:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(slot.cpus)
    if slot.kv_cache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(slot.kv_cache_gib)
    if slot.cuda_device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(slot.cuda_device)
    return env


def cpu_list(cpus: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) → '0-2,5', the syntax VLLM_CPU_OMP_THREADS_BIND takes."""
    parts: list[str] = []
    start = prev = None
    for cpu in sorted(cpus):
        if prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
        start = prev = cpu
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(parts)
