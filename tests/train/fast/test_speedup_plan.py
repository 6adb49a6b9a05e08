"""`plan_speedups` as a table of cases: every decision of a run, without a GPU (facts are made up)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lorafleet.config import SpeedupConfig, TrainConfig
from lorafleet.train.fast.facts import DeviceFacts, ModelFacts
from lorafleet.train.fast.memory import ModelDims, activation_bytes_per_token, trainable_bytes_per_param
from lorafleet.train.fast.plan import PlanError, SpeedupPlan, plan_speedups

GB = 10**9
LLAMA_8B = ModelDims(hidden=4096, intermediate=14336, kv_dim=1024, layers=32)
# After loading the 8B shape in NF4 with fp32 embedding and head and attaching the adapter: ~3.6 GB of NF4
# weights, 4.2 GB of fp32 tables, 0.34 GB of LoRA weights.
H200 = DeviceFacts("cuda", free_bytes=130 * GB, allocated_bytes=int(8.2 * GB), triton_problem=None,
                   dropout_problem=None, rope_problem=None, dequant_problem=None)
CPU = DeviceFacts("cpu")
# The Llama-3.1-8B shape after NF4 loading and prepare_model_for_kbit_training: fp32 embedding and head
# holding bf16 values (2.1 GB saved by bf16 storage), an r=32 all-linear adapter.
QLORA_8B = ModelFacts(
    model_type="llama", layer_classes=frozenset({"LlamaDecoderLayer"}), attention_classes=frozenset({"LlamaAttention"}),
    norm_classes=frozenset({"LlamaRMSNorm"}), dims=LLAMA_8B, trainable_params=83_886_080, embed_element_size=4,
    head_numel=128256 * 4096, frozen_fp32_bytes=2_101_608_448, bf16_table_bytes=2_101_346_304,
    head_is_bf16_table=True, head_is_frozen_fp32=True, nf4_weights=7 * 32,
)
BF16_8B = dataclasses.replace(QLORA_8B, embed_element_size=2, head_is_bf16=True, frozen_fp32_bytes=0,
                              bf16_table_bytes=0, head_is_bf16_table=False, head_is_frozen_fp32=False, nf4_weights=0)
# (a)'s measured peak in BENCHMARKS.md round 6: the budget the benchmark's (b) rows plan within.
SEED_STACK_PEAK = int(17.8 * GB)


def make_config(arguments: dict) -> TrainConfig:
    values = {"batch_size": 2, "quantization": "nf4", **(arguments.get("config") or {})}
    return TrainConfig(**values, speedups=SpeedupConfig(**(arguments.get("speedups") or {})))


def make(config: dict | None = None, speedups: dict | None = None, device: DeviceFacts = H200, world: int = 1,
         model: ModelFacts = QLORA_8B, row_tokens: int = 2048, budget: int | None = None,
         precision: str = "bf16", row_lengths: tuple[int, ...] = (), passes_per_row: float = 1.0) -> SpeedupPlan:
    train = make_config({"config": config, "speedups": speedups})
    return plan_speedups(train, precision, device, world, model, row_tokens, budget, row_lengths, passes_per_row)


def needs(mode: str, rows: int, tokens: int = 2048, masks: bool = True) -> int:
    """The budget that activations of `rows` rows need under `mode`, plus the plan's fixed part (the same on
    several processes: they all-reduce the gradients in place). ``masks``: the run has dropout (the default
    config's 0.05), whose masks offload draws with torch."""
    saved = QLORA_8B.bf16_table_bytes
    fixed = H200.allocated_bytes - saved + trainable_bytes_per_param("adamw8bit") * QLORA_8B.trainable_params + 512 * 2**20
    return fixed + rows * tokens * activation_bytes_per_token(LLAMA_8B, mode, True, 4, masks)


CASES = {
    # id: (make() arguments, expected fields, words every reason line together must contain)
    "cpu": (dict(device=CPU, config={"quantization": "none"}),
            dict(fast=False, recompute="transformers", micro_batch=2, optimizer="adamw"), "CUDA-only"),
    "cpu without checkpointing": (dict(device=CPU, config={"quantization": "none", "gradient_checkpointing": False}),
                                  dict(fast=False, recompute="none"), "CUDA-only"),
    "cpu says a memory budget does nothing there": (dict(device=CPU, config={"quantization": "none"}, budget=4 * GB),
                                                    dict(fast=False), "CUDA-only; max_memory_gb bounds GPU memory, unused on a CPU"),
    "the plain CUDA path says it holds no budget": (dict(speedups={"enabled": False}, budget=SEED_STACK_PEAK), dict(fast=False),
                                                    "max_memory_gb is not held on the plain path"),
    "cpu honours a fixed micro-batch": (dict(device=CPU, config={"quantization": "none"}, speedups={"micro_batch": 1}),
                                        dict(fast=False, micro_batch=1), ""),
    "one CUDA process, QLoRA": (dict(), dict(
        fast=True, micro_batch=2, recompute="none", cuda_graphs=True, pad_multiple=64, fused_loss=True,
        triton_kernels=True, rope_kernel=True, nf4_kernel=True, fused_lora=True, fused_mlp=True, storage="bf16-tables",
        optimizer="adamw8bit", reasons=()), ""),
    # Several processes sum their gradients after the passes, outside the graphs: every speed-up stays on.
    "several processes": (dict(world=2), dict(
        fast=True, micro_batch=2, recompute="none", cuda_graphs=True, pad_multiple=64, fused_loss=True,
        triton_kernels=True, storage="bf16-tables", optimizer="adamw8bit", world_size=2, global_batch=4, reasons=()), ""),
    "several processes, gradient accumulation": (dict(world=4, config={"grad_accum": 3}),
                                                 dict(cuda_graphs=True, world_size=4, global_batch=24), ""),
    "several processes within the seed stack's peak": (dict(world=2, budget=SEED_STACK_PEAK), dict(
        micro_batch=1, recompute="none", cuda_graphs=True), ""),
    "several processes: no copy of the gradients to fit": (  # they are all-reduced in place
        dict(world=2, budget=needs("none", 1)), dict(micro_batch=1, recompute="none", cuda_graphs=True), ""),
    "several processes, a byte short of no recompute": (
        dict(world=2, budget=needs("none", 1) - 1), dict(micro_batch=1, recompute="attention", cuda_graphs=False),
        "(needed to fit the memory)"),
    "several processes on the CPU": (dict(device=CPU, world=2, config={"quantization": "none"}),
                                     dict(fast=False, world_size=2, global_batch=4), "CUDA-only"),
    "several processes, offload asked": (dict(world=2, speedups={"recompute": "offload"}), PlanError,
                                         "pinned host memory"),
    "several processes, only offload fits": (dict(world=2, budget=needs("attention", 1) - 1), PlanError,
                                             "only with speedups.recompute offload"),
    "one process, offload asked": (dict(speedups={"recompute": "offload"}), dict(recompute="offload",
                                                                                 world_size=1), ""),
    "packing": (dict(config={"packing": True}), dict(fast=True, cuda_graphs=False), "packing"),
    "fp16": (dict(config={"quantization": "none"}, precision="fp16", model=dataclasses.replace(
        BF16_8B, bf16_table_bytes=1000)), dict(fast=True, cuda_graphs=False, storage="as-loaded",
                                               optimizer="adamw-fused"), "fp16 loss scaling"),
    "bf16 LoRA": (dict(config={"quantization": "none"}, model=BF16_8B),
                  dict(fast=True, storage="as-loaded", optimizer="adamw-fused", cuda_graphs=True, nf4_kernel=False), ""),
    "bf16 LoRA: no NF4 weights, no word about the NF4 kernel": (
        dict(config={"quantization": "none"}, model=BF16_8B, device=dataclasses.replace(H200, dequant_problem="no NF4 weights")),
        dict(nf4_kernel=False, reasons=()), ""),
    "NF4 kernel switched off": (dict(speedups={"triton_dequant": False}), dict(nf4_kernel=False, reasons=()), ""),
    "NF4 kernel fails its check": (
        dict(device=dataclasses.replace(H200, dequant_problem="Triton NF4 dequantization off: differs from bitsandbytes")),
        dict(fast=True, nf4_kernel=False, cuda_graphs=True), "differs from bitsandbytes"),
    "an NF4 weight the kernel does not read": (
        dict(model=dataclasses.replace(QLORA_8B, nf4_layout_problem="quant_type fp4 (the kernel reads NF4)")),
        dict(fast=True, nf4_kernel=False), "Triton NF4 dequantization off: quant_type fp4"),
    "NF4 with the paged optimizer": (dict(speedups={"paged_optimizer": True}), dict(optimizer="paged-adamw8bit"), ""),
    "NF4, frozen_bf16": (dict(speedups={"frozen_bf16": True}), dict(storage="frozen-bf16"), ""),
    "frozen_bf16 is for QLoRA only": (dict(config={"quantization": "none"}, model=BF16_8B,
                                           speedups={"frozen_bf16": True}), dict(storage="as-loaded"), ""),
    # What rounds 5 and 6 planned and measured on the H200 for the exact defaults (17.1 GB steady peak).
    "within the seed stack's peak: micro-batch 1 without recompute (graphs)": (
        dict(budget=SEED_STACK_PEAK), dict(micro_batch=1, recompute="none", cuda_graphs=True), ""),
    "recompute needed: graphs off": (
        dict(budget=needs("attention", 1)), dict(micro_batch=1, recompute="attention", cuda_graphs=False,
                                                 pad_multiple=None), "(needed to fit the memory)"),
    "nothing fits with attention recompute: offload, at both rows": (
        dict(budget=needs("attention", 1) - 1), dict(micro_batch=2, recompute="offload"), "recompute offload"),
    # Round 9 ran batch 8 within Unsloth's 11.5 GB at one row per pass while 4 GB stayed free: offload now takes
    # the largest micro-batch the budget holds.
    "nothing fits without offload: the largest micro-batch that fits with it": (
        dict(config={"batch_size": 8}, budget=needs("offload", 4)), dict(micro_batch=4, recompute="offload"),
        "recompute offload"),
    "a byte short of offload at four rows: two": (
        dict(config={"batch_size": 8}, budget=needs("offload", 4) - 1), dict(micro_batch=2, recompute="offload"),
        "recompute offload"),
    # Offload recomputes from host buffers a graph addresses directly: graphed when nothing in a layer is random.
    "offload asked, dropout 0: graphed": (
        dict(config={"lora_dropout": 0.0}, speedups={"recompute": "offload"}, row_tokens=2000),
        dict(recompute="offload", micro_batch=2, cuda_graphs=True, pad_multiple=64, pad_widths=(2048,),
             pass_tokens=2 * 2048, reasons=()), ""),
    "offload asked, dropout on: eager": (
        dict(speedups={"recompute": "offload"}, row_tokens=2000),
        dict(recompute="offload", cuda_graphs=False, pad_multiple=None, pad_widths=(), pass_tokens=2 * 2048),
        "recompute offload with dropout (recomputed passes redraw dropout seeds) (speedups.recompute)"),
    "offload asked, LoRA dropout 0 but attention dropout: eager": (
        dict(config={"lora_dropout": 0.0}, speedups={"recompute": "offload"},
             model=dataclasses.replace(QLORA_8B, attention_dropout=0.1)),
        dict(recompute="offload", cuda_graphs=False), "recompute offload with dropout"),
    "only offload fits, dropout 0: graphed": (
        dict(config={"lora_dropout": 0.0, "batch_size": 8}, budget=needs("offload", 4, masks=False)),
        dict(recompute="offload", micro_batch=4, cuda_graphs=True, pass_tokens=4 * 2048, reasons=()), ""),
    "graphs off: a pass holds the longest row unpadded": (
        dict(speedups={"cuda_graphs": False}, row_tokens=2000), dict(cuda_graphs=False, pass_tokens=2 * 2000), ""),
    "a budget that holds offload at one row, exactly": (
        dict(budget=needs("offload", 1)), dict(micro_batch=1, recompute="offload", peak_estimate=needs("offload", 1)),
        "recompute offload"),
    "a budget below the least the run needs: refused": (dict(budget=needs("offload", 1) - 1), PlanError,
                                                        r"max_memory_gb \d+\.\d\d: this run needs about"),
    "a micro-batch set by the user that the budget cannot hold: refused": (
        dict(speedups={"micro_batch": 2, "recompute": "none"}, budget=needs("none", 1)), PlanError,
        "micro-batch 2 and recompute none"),
    "a budget with rows of several lengths: graphs off": (
        dict(budget=SEED_STACK_PEAK, row_lengths=(1000, 2048)), dict(cuda_graphs=False, pad_multiple=None),
        "max_memory_gb with rows of several lengths"),
    "the default budget with rows of several lengths: graphs on": (dict(row_lengths=(1000, 2048)), dict(cuda_graphs=True), ""),
    "graphs switched off": (dict(speedups={"cuda_graphs": False}, budget=needs("attention", 2)),
                            dict(cuda_graphs=False, pad_multiple=None, micro_batch=2, recompute="attention"), ""),
    "recompute set by the user": (dict(speedups={"recompute": "attention"}), dict(recompute="attention",
                                                                                 cuda_graphs=False),
                                  "recompute attention (recomputed passes redraw dropout seeds) (speedups.recompute)"),
    "graphs pad every pass to the longest row without the lengths": (dict(), dict(pad_widths=(2048,)), ""),
    "graphs: the pad widths come from the rows' lengths": (
        dict(row_tokens=1650, row_lengths=(1000,) * 100 + (1650,) * 100, passes_per_row=3.0),
        dict(cuda_graphs=True, pad_widths=(1024, 1664)), ""),
    "no graphs, no pad widths": (dict(speedups={"cuda_graphs": False}, row_lengths=(1000, 1650)),
                                 dict(cuda_graphs=False, pad_widths=()), ""),
    "micro-batch set by the user": (dict(speedups={"micro_batch": 1}), dict(micro_batch=1, recompute="none"), ""),
    "Triton kernels switched off": (dict(speedups={"fused_elementwise": False}),
                                    dict(triton_kernels=False, rope_kernel=False), ""),
    "RoPE kernel switched off": (dict(speedups={"triton_rope": False}), dict(triton_kernels=True, rope_kernel=False), ""),
    "fused loss switched off": (dict(speedups={"fused_cross_entropy": False}), dict(fused_loss=False), ""),
    "bf16 storage switched off": (dict(speedups={"bf16_storage": False}), dict(storage="as-loaded"), ""),
    "speed-ups switched off": (dict(speedups={"enabled": False}),
                               dict(fast=False, recompute="transformers", optimizer="adamw8bit"), "enabled is false"),
    "Triton kernels fail their check": (dict(device=dataclasses.replace(H200, triton_problem="Triton kernels off: X")),
                                        dict(fast=True, triton_kernels=False, rope_kernel=False), "Triton kernels off"),
    "RoPE kernel fails its check": (dict(device=dataclasses.replace(H200, rope_problem="Triton RoPE off: X")),
                                    dict(triton_kernels=True, rope_kernel=False), "Triton RoPE off"),
    "dropout kernel fails its check, dropout on": (
        dict(device=dataclasses.replace(H200, dropout_problem="Triton dropout off: X")),
        dict(cuda_graphs=False, pad_multiple=None), "Triton dropout off"),
    "dropout kernel fails its check, dropout off": (
        dict(config={"lora_dropout": 0.0}, device=dataclasses.replace(H200, dropout_problem="Triton dropout off: X")),
        dict(cuda_graphs=True), ""),
    "DoRA": (dict(config={"dora": True}), dict(fast=False), "DoRA"),
    "LoRA on the head": (dict(model=dataclasses.replace(QLORA_8B, head_has_lora=True)), dict(fused_loss=False),
                         "the head has a LoRA adapter"),
    "rotary frequencies that depend on the length": (
        dict(model=dataclasses.replace(QLORA_8B, rope_types=frozenset({"dynamic"}))),
        dict(fast=True, cuda_graphs=False, pad_multiple=None), "depend on the sequence length"),
    "a GELU Llama": (dict(model=dataclasses.replace(QLORA_8B, hidden_act="gelu")), dict(fast=False), "hidden_act"),
    "hooks on the layers": (dict(model=dataclasses.replace(QLORA_8B, hooked=True)), dict(fast=False), "hooks"),
}
for arch, layer in (("mistral", "Mistral"), ("qwen2", "Qwen2")):
    CASES[f"{arch} is allowed"] = (dict(model=dataclasses.replace(
        QLORA_8B, model_type=arch, layer_classes=frozenset({f"{layer}DecoderLayer"}),
        attention_classes=frozenset({f"{layer}Attention"}), norm_classes=frozenset({f"{layer}RMSNorm"}))),
        dict(fast=True, architecture=arch), "")
for arch in ("gemma", "gemma2", "granite"):
    CASES[f"{arch} is refused"] = (dict(model=dataclasses.replace(QLORA_8B, model_type=arch)),
                                   dict(fast=False, recompute="transformers", optimizer="adamw8bit"), "allow-list")


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_plan(case: str):
    arguments, expected, words = CASES[case]
    if isinstance(expected, type):  # a refused run: the error and words of its message
        with pytest.raises(expected, match=words):
            make(**arguments)
        return
    plan = make(**arguments)
    assert {k: getattr(plan, k) for k in expected} == expected, plan
    reasons = " ".join(plan.reasons)
    assert words in reasons, reasons
    if not plan.fast:
        assert len(plan.reasons) == 1  # the plain path says why, in one line
    assert plan.micro_batch >= 1 and plan.rows % plan.micro_batch == 0
    # Graphs need the fused path and no recompute, or offload without dropout.
    assert plan.cuda_graphs <= (plan.fast and (plan.recompute == "none" or (
        plan.recompute == "offload" and make_config(arguments).lora_dropout == 0)))
    if plan.fast:
        assert plan.pass_tokens >= plan.micro_batch * arguments.get("row_tokens", 2048)
    assert (plan.pad_multiple is not None) == plan.cuda_graphs == bool(plan.pad_widths)
    if plan.fast:  # every fused plan fits the budget it was given, and the log line says so
        assert 0 < plan.peak_estimate <= plan.memory_budget
        assert f"planned peak {plan.peak_estimate / 1e9:.1f} GB of {plan.memory_budget / 1e9:.1f} GB" in plan.describe()


def test_padding_rounds_the_planned_row_up_only_when_graphs_pad():
    # A budget that fits 2 rows of 2049 tokens without recompute, but not 2 rows padded to 2112.
    budget = needs("none", 2, 2049)
    assert make(budget=budget, row_tokens=2048).micro_batch == 2
    assert make(budget=budget, row_tokens=2049).micro_batch == 1  # padded to 2112 for graphs
    assert make(budget=budget, row_tokens=2049, speedups={"cuda_graphs": False, "recompute": "none"}).micro_batch == 2


def test_default_budget_is_allocated_plus_most_of_free():
    tight = dataclasses.replace(H200, free_bytes=int((needs("none", 1) - H200.allocated_bytes + 2.2 * GB) / 0.9))
    assert make(device=tight).micro_batch == 1  # 2.2 GB over the fixed part + one row: the table savings count
    assert make(device=dataclasses.replace(tight, free_bytes=tight.free_bytes // 2)).recompute != "none"


def test_describe_and_summary():
    plan = make()
    line = plan.describe()
    assert line.startswith("CUDA speed-ups:") and "CUDA graphs on" in line and "micro-batch 2 of 2 rows" in line
    assert "NF4 kernel on" in line and "CUDA graphs on (1 row width, 2048 tokens)" in line
    plain = make(device=CPU, config={"quantization": "none"})
    assert "plain transformers + PEFT path" in plain.describe() and "CUDA-only" in plain.describe()
    two = make(world=2, config={"grad_accum": 2})
    assert "CUDA graphs on" in two.describe() and "2 processes, global batch 8 rows" in two.describe()
    assert "1 process, global batch 2 rows" in line
    assert json.loads(json.dumps(two.summary()))["world_size"] == 2 and two.summary()["global_batch"] == 8
    assert json.loads(json.dumps(plan.summary()))["cuda_graphs"] is True  # the manifest stores it as JSON
