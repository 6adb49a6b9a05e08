"""Engine flag derivation: a table of fleets and hosts → the flags and replica slots they get."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorafleet.registry.fleet import ServedVersion
from lorafleet.serve.config import FleetConfig
from lorafleet.serve.flags import (
    EnginePlanError, HostInfo, ReplicaSlot, cpu_list, default_kv_cache_gib, derive_plan, engine_argv, engine_env,
)

CPU2 = HostInfo(cpu_ids=(0, 1), cpu_bf16=False, memory_gib=24)
CPU2_BF16 = HostInfo(cpu_ids=(0, 1), cpu_bf16=True, memory_gib=24)
CPU16 = HostInfo(cpu_ids=tuple(range(16)), cpu_bf16=True, memory_gib=128)
GPU2 = HostInfo(cpu_ids=tuple(range(32)), cpu_bf16=True, memory_gib=256, cuda_devices=2, cuda_bf16=True)
OLD_GPU = HostInfo(cpu_ids=(0, 1, 2, 3), cpu_bf16=False, memory_gib=64, cuda_devices=1, cuda_bf16=False)


def version(name: str, v: int = 1, seq: int = 512, rank: int = 8, dora: bool = False) -> ServedVersion:
    return ServedVersion(name, v, Path("/store") / name, seq, rank, dora)


@pytest.mark.parametrize(
    ("routed", "expected_len", "expected_rank"),
    [
        ([], 8192, 16),  # nothing routed: the base model's length, vLLM's default rank
        ([version("a", seq=512, rank=8)], 512, 8),
        ([version("a", seq=512, rank=8), version("b", seq=2048, rank=4)], 2048, 8),  # longest length, rank 4 → 8
        ([version("a", rank=1)], 512, 1),
        ([version("a", rank=9)], 512, 16),
        ([version("a", rank=33), version("b", rank=16)], 512, 64),
        ([version("a", rank=300)], 512, 320),
        ([version("a", rank=512)], 512, 512),
        ([version("a", seq=16384)], 8192, 8),  # trained longer than the base allows: capped to the base
        ([version("a", seq=4096, rank=64, dora=True), version("b", seq=256, rank=8)], 256, 8),  # DoRA does not shape flags
        ([version("a", rank=1024), version("b", rank=8)], 512, 8),  # unservable rank does not shape flags
    ],
)
def test_length_and_rank_come_from_routed_adapters(routed, expected_len, expected_rank) -> None:
    plan = derive_plan(routed, base_max_len=8192, host=CPU2, config=FleetConfig())
    assert plan.flags.max_model_len == expected_len
    assert plan.flags.max_lora_rank == expected_rank


def test_unservable_versions_are_named_in_the_reasons() -> None:
    plan = derive_plan([version("a", dora=True), version("b")], 8192, CPU2, FleetConfig())
    assert any("a@v1 cannot be served" in r for r in plan.reasons)


def test_no_routed_adapter_uses_the_configured_length_capped_by_the_base() -> None:
    assert derive_plan([], 8192, CPU2, FleetConfig(max_model_len=1024)).flags.max_model_len == 1024
    assert derive_plan([], 2048, CPU2, FleetConfig(max_model_len=4096)).flags.max_model_len == 2048


@pytest.mark.parametrize(
    ("working_set", "max_loras", "max_cpu_loras", "expected"),
    [
        (0, 4, 16, (1, 16)),
        (1, 4, 16, (1, 16)),
        (3, 4, 16, (3, 16)),
        (10, 4, 16, (4, 16)),
        (40, 4, 6, (4, 6)),
        (10, 8, 2, (8, 8)),  # --max-cpu-loras may not be below --max-loras
    ],
)
def test_lora_slots_follow_the_working_set_and_config(working_set, max_loras, max_cpu_loras, expected) -> None:
    routed = [version(f"a{i}") for i in range(working_set)]
    flags = derive_plan(routed, 8192, CPU2, FleetConfig(max_loras=max_loras, max_cpu_loras=max_cpu_loras)).flags
    assert (flags.max_loras, flags.max_cpu_loras) == expected


@pytest.mark.parametrize(
    ("host", "dtype", "utilization"),
    [(CPU2, "float32", None), (CPU2_BF16, "bfloat16", None), (GPU2, "bfloat16", 0.9), (OLD_GPU, "float16", 0.9)],
)
def test_dtype_by_host(host, dtype, utilization) -> None:
    flags = derive_plan([], 8192, host, FleetConfig()).flags
    assert (flags.dtype, flags.gpu_memory_utilization) == (dtype, utilization)


@pytest.mark.parametrize(
    ("host", "replicas", "reserved", "expected_cpus"),
    [
        (CPU2, 1, None, [(1,)]),  # one core left to the gateway and vLLM's front end
        (CPU2, 2, None, [(0,), (1,)]),  # the measured two-replica layout on the 2-core machine
        (CPU16, 1, None, [tuple(range(1, 16))]),
        (CPU16, 3, None, [(1, 2, 3, 4, 5), (6, 7, 8, 9, 10), (11, 12, 13, 14, 15)]),
        (CPU16, 4, 0, [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]),
        (HostInfo(cpu_ids=(4, 5, 6, 7), cpu_bf16=False, memory_gib=8), 2, 2, [(6,), (7,)]),  # affinity-restricted
    ],
)
def test_cpu_replicas_get_their_own_cores(host, replicas, reserved, expected_cpus) -> None:
    plan = derive_plan([], 8192, host, FleetConfig(replicas=replicas, reserved_cpus=reserved))
    assert [slot.cpus for slot in plan.slots] == expected_cpus
    all_cpus = [c for slot in plan.slots for c in slot.cpus]
    assert len(all_cpus) == len(set(all_cpus))  # no core shared by two replicas


def test_more_cpu_replicas_than_cores_is_refused() -> None:
    with pytest.raises(EnginePlanError, match="3 CPU replica.*at least 3 core"):
        derive_plan([], 8192, CPU2, FleetConfig(replicas=3))
    with pytest.raises(EnginePlanError, match="1 reserved"):
        derive_plan([], 8192, CPU2, FleetConfig(replicas=2, reserved_cpus=1))


@pytest.mark.parametrize(
    ("memory", "replicas", "expected"), [(24, 1, 4), (24, 2, 2), (8, 4, 1), (2, 1, 1), (1024, 1, 16)]
)
def test_default_kv_cache_share(memory, replicas, expected) -> None:
    assert default_kv_cache_gib(memory, replicas) == expected


def test_configured_kv_cache_wins() -> None:
    plan = derive_plan([], 8192, CPU2, FleetConfig(replicas=2, kv_cache_gib=1))
    assert [s.kv_cache_gib for s in plan.slots] == [1, 1]


def test_cuda_replicas_spread_over_gpus_and_share_memory() -> None:
    plan = derive_plan([], 8192, GPU2, FleetConfig(replicas=4, gpu_memory_utilization=0.8))
    assert [s.cuda_device for s in plan.slots] == [0, 1, 0, 1]
    assert plan.flags.gpu_memory_utilization == 0.4
    assert all(s.cpus == () and s.kv_cache_gib is None for s in plan.slots)


def test_command_and_environment() -> None:
    flags = derive_plan([version("a", seq=512, rank=8)], 8192, CPU2, FleetConfig(max_loras=2)).flags
    argv = engine_argv(flags, "/m", "base", 5000, ["--max-num-seqs", "8"])
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    assert "--api-key" not in argv  # the key travels in VLLM_API_KEY, out of `ps` output
    for part in ("--host 127.0.0.1", "--port 5000", "--dtype float32", "--max-model-len 512",
                 "--enable-lora", "--max-lora-rank 8", "--max-loras 1", "--max-cpu-loras 16", "--served-model-name base"):
        assert part in joined
    assert argv[-2:] == ["--max-num-seqs", "8"]
    assert "--gpu-memory-utilization" not in argv
    env = engine_env(ReplicaSlot(1, cpus=(2, 3), kv_cache_gib=2))
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_OMP_THREADS_BIND": "2-3", "VLLM_CPU_KVCACHE_SPACE": "2"}
    assert engine_env(ReplicaSlot(0, cuda_device=1))["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.parametrize(
    ("cpus", "text"), [((0,), "0"), ((0, 1), "0-1"), ((0, 1, 2, 5), "0-2,5"), ((7, 3, 4), "3-4,7"), ((1, 3, 5), "1,3,5")]
)
def test_cpu_list_syntax(cpus, text) -> None:
    assert cpu_list(cpus) == text
