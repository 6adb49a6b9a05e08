"""Every preflight refusal, with its message; preflight is pure, so devices and models are made up."""

from __future__ import annotations

import pytest

from lorafleet.config import TrainConfig
from lorafleet.data.dataset import PrepareReport, TokenStats
from lorafleet.train.preflight import DeviceInfo, ModelInfo, PreflightError, preflight, resolve_precision

CPU = DeviceInfo("cpu", bf16=False, bitsandbytes=False, name="test cpu")
CPU_BF16 = DeviceInfo("cpu", bf16=True, bitsandbytes=False)
H200 = DeviceInfo("cuda", bf16=True, bitsandbytes=True, flash_attn=False, name="H200")
V100 = DeviceInfo("cuda", bf16=False, bitsandbytes=True, name="V100")
MODEL = ModelInfo("model-fp", "tok-fp", max_position_embeddings=2048)


def report(**changes) -> PrepareReport:
    values = dict(
        lines=10, accepted=10, rejected=0, duplicates=0, truncated=0, train=9, eval=1,
        tokens=TokenStats(total=1000, trained=300, max=200, p50=100, p95=190), model="m",
        model_fingerprint="model-fp", tokenizer_fingerprint="tok-fp", max_seq_length=1024, seed=0,
    )
    values.update(changes)
    return PrepareReport(**values)


def refused(config: TrainConfig, device: DeviceInfo, rep: PrepareReport | None = None, model: ModelInfo = MODEL) -> str:
    with pytest.raises(PreflightError) as info:
        preflight(config, rep or report(), model, device)
    return str(info.value)


def test_accepts_plain_lora_on_cpu_as_fp32():
    assert preflight(TrainConfig(), report(), MODEL, CPU).precision == "fp32"


def test_auto_precision():
    assert resolve_precision(TrainConfig(), H200) == "bf16"
    assert resolve_precision(TrainConfig(), V100) == "fp32"
    assert resolve_precision(TrainConfig(), CPU_BF16) == "fp32"  # emulated or not, fp32 is the safe CPU default


def test_qlora_accepted_on_cuda_with_bitsandbytes():
    assert preflight(TrainConfig(quantization="nf4"), report(), MODEL, H200).precision == "bf16"


def test_refuses_fp16_with_nf4():
    message = refused(TrainConfig(quantization="nf4", precision="fp16"), H200)
    assert "fp16 with nf4" in message and "Attempting to unscale FP16 gradients" in message


def test_refuses_nf4_without_cuda():
    message = refused(TrainConfig(quantization="nf4"), DeviceInfo("cpu", bf16=False, bitsandbytes=True))
    assert "--quantization nf4 needs a CUDA GPU" in message


def test_refuses_nf4_without_bitsandbytes():
    message = refused(TrainConfig(quantization="nf4"), DeviceInfo("cuda", bf16=True, bitsandbytes=False))
    assert "needs the bitsandbytes package" in message


def test_refuses_bf16_where_unsupported():
    assert "--precision bf16 needs native bf16 support, which this cpu (test cpu) lacks" in refused(TrainConfig(precision="bf16"), CPU)
    assert "which this cuda (V100) lacks" in refused(TrainConfig(precision="bf16"), V100)
    assert preflight(TrainConfig(precision="bf16"), report(), MODEL, CPU_BF16).precision == "bf16"


def test_refuses_fp16_on_cpu():
    assert "--precision fp16 is for CUDA" in refused(TrainConfig(precision="fp16"), CPU)


def test_refuses_dataset_for_another_tokenizer():
    message = refused(TrainConfig(), CPU, report(tokenizer_fingerprint="other-tok"))
    assert "prepared for tokenizer other-tok" in message and "run `lorafleet prepare --model" in message


def test_refuses_dataset_for_another_model():
    message = refused(TrainConfig(), CPU, report(model_fingerprint="other-model", model="other"))
    assert "prepared for model 'other'" in message


def test_refuses_dataset_without_trained_tokens():
    message = refused(TrainConfig(), CPU, report(tokens=TokenStats(total=100, trained=0)))
    assert "no trained tokens" in message


def test_refuses_sequence_longer_than_model_context():
    message = refused(TrainConfig(), CPU, report(max_seq_length=4096))
    assert "max_seq_length 4096 exceeds the model's context 2048" in message


def test_refuses_packing_without_varlen_attention():
    assert "--packing needs flash-attention" in refused(TrainConfig(packing=True), H200)


def test_dora_with_nf4_is_allowed_with_a_warning():
    result = preflight(TrainConfig(quantization="nf4", dora=True), report(), MODEL, H200)
    assert any("vLLM cannot serve" in w for w in result.warnings)


def test_lists_every_problem_at_once():
    error = None
    try:
        preflight(TrainConfig(quantization="nf4", precision="fp16"), report(max_seq_length=9999), MODEL, CPU)
    except PreflightError as exc:
        error = exc
    assert error is not None and len(error.problems) == 5  # fp16+nf4, no CUDA, no bitsandbytes, fp16 on CPU, context


def test_refuses_offload_recompute_on_several_processes_before_weights_load():
    offload = TrainConfig(quantization="nf4", speedups={"recompute": "offload"})
    assert preflight(offload, report(), MODEL, H200).precision == "bf16"  # one process: the long-context mode
    with pytest.raises(PreflightError, match="pinned host memory.*2 processes would each pin") as info:
        preflight(offload, report(), MODEL, H200, world_size=2)
    assert "speedups.recompute to auto or attention" in str(info.value)
    assert preflight(TrainConfig(quantization="nf4"), report(), MODEL, H200, world_size=2).precision == "bf16"
