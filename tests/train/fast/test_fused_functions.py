"""The fused autograd functions and kernels' torch versions compute what PEFT / transformers compute
(float64 on the CPU), and the small pure helpers of the fast path."""

from __future__ import annotations

import pytest
import torch
from fast_models import batch, tiny_llama, with_lora

from lorafleet.train.fast import fused_lora
from lorafleet.train.fast.fused_lora import LoraLinearFunction, NormLoraMLPFunction
from lorafleet.train.fast.kernels import rms_norm, rms_norm_grad, silu_mul, silu_mul_grad
from lorafleet.train.fast.plan import capture_problem


def test_fused_lora_functions_match_peft_in_float64():
    peft = with_lora(tiny_llama(torch.float64, "cpu"))
    layer = peft.base_model.model.model.layers[0]
    x = torch.randn(2, 5, 128, dtype=torch.float64, requires_grad=True)
    proj = layer.self_attn.q_proj
    ref = proj(x)
    ref.sum().backward()
    ref_grads = (x.grad.clone(), proj.lora_A["default"].weight.grad.clone(), proj.lora_B["default"].weight.grad.clone())
    x.grad = None
    proj.zero_grad()
    got = LoraLinearFunction.apply(x, proj.lora_A["default"].weight, proj.lora_B["default"].weight,
                                   proj.get_base_layer(), float(proj.scaling["default"]), 0.0)
    got.sum().backward()
    torch.testing.assert_close(got, ref)
    for r, g in zip(ref_grads, (x.grad, proj.lora_A["default"].weight.grad, proj.lora_B["default"].weight.grad)):
        torch.testing.assert_close(g, r)

    mlp, norm = layer.mlp, layer.post_attention_layernorm
    h = torch.randn(2, 5, 128, dtype=torch.float64, requires_grad=True)
    ref = mlp(norm(h))
    (ref * torch.linspace(-1, 1, 128, dtype=torch.float64)).sum().backward()
    ref_grads = [h.grad.clone()] + [p.grad.clone() for p in mlp.parameters() if p.grad is not None]
    h.grad = None
    mlp.zero_grad()
    parts = [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    tensors = [t for m in parts for t in (m.lora_A["default"].weight, m.lora_B["default"].weight)]
    got = NormLoraMLPFunction.apply(h, norm.weight, norm.variance_epsilon, tuple(m.get_base_layer() for m in parts),
                                    tuple(float(m.scaling["default"]) for m in parts), 0.0, *tensors)
    (got * torch.linspace(-1, 1, 128, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)  # RMSNorm statistics are fp32, as in transformers
    got_grads = [h.grad] + [p.grad for p in mlp.parameters() if p.grad is not None]
    for r, g in zip(ref_grads, got_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("keep_dense", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_a_recomputation_without_the_down_matmul_gives_the_same_gradients(p: float, keep_dense: bool):
    """``output_needed=False`` (offload's recompute run) skips the down projection's frozen matmul; backward
    must not notice: every gradient equals the full run's, dropout masks included."""
    peft = with_lora(tiny_llama(torch.float64, "cpu"), dropout=p)
    layer = peft.base_model.model.model.layers[0]
    mlp, norm = layer.mlp, layer.post_attention_layernorm
    parts = [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    tensors = [t for m in parts for t in (m.lora_A["default"].weight, m.lora_B["default"].weight)]
    h = torch.randn(2, 5, 128, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 5, 128, dtype=torch.float64)
    grads = []
    for output_needed in (True, False):
        h.grad = None
        mlp.zero_grad()
        torch.manual_seed(5)
        out = NormLoraMLPFunction.apply(h, norm.weight, norm.variance_epsilon, tuple(m.get_base_layer() for m in parts),
                                        tuple(float(m.scaling["default"]) for m in parts), p, *tensors, False,
                                        keep_dense, False, False, output_needed)
        assert out.shape == h.shape
        if not output_needed:
            assert not out.any()  # a stand-in: zeros, the down matmul never ran
        out.backward(dy)
        grads.append([h.grad.clone()] + [t.grad.clone() for t in tensors])
    assert all(g.abs().sum() > 0 for g in grads[0])
    for full, skipped in zip(*grads, strict=True):
        torch.testing.assert_close(skipped, full, rtol=0, atol=0)


def test_fused_lora_dropout_is_dropout_in_float64():
    """The fused function applies exactly x * mask / (1 - p) on the LoRA path, with the mask it
    regenerates in backward from the same seed."""
    peft = with_lora(tiny_llama(torch.float64, "cpu"), dropout=0.3)
    proj = peft.base_model.model.model.layers[0].mlp.down_proj
    a, b, base, scale = proj.lora_A["default"].weight, proj.lora_B["default"].weight, proj.get_base_layer(), \
        float(proj.scaling["default"])
    x = torch.randn(2, 5, 256, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    got = LoraLinearFunction.apply(x, a, b, base, scale, 0.3)
    got.backward(torch.ones_like(got))
    got_grads = (x.grad.clone(), a.grad.clone(), b.grad.clone())
    x.grad, a.grad, b.grad = None, None, None
    torch.manual_seed(11)
    mask = fused_lora.keep_mask(x.reshape(-1, 256), 0.3, fused_lora.new_seed()).reshape(x.shape)
    assert 0 < int(mask.sum()) < mask.numel()
    ref = base(x) + ((x * mask / 0.7) @ a.t() @ b.t()) * scale
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(got, ref)
    for r, g in zip((x.grad, a.grad, b.grad), got_grads):
        torch.testing.assert_close(g, r)


def test_torch_elementwise_kernels_match_autograd_in_float64():
    g = torch.randn(7, 96, dtype=torch.float64, requires_grad=True)
    u = torch.randn(7, 96, dtype=torch.float64, requires_grad=True)
    d = torch.randn(7, 96, dtype=torch.float64)
    ref = torch.nn.functional.silu(g) * u
    ref.backward(d)
    torch.testing.assert_close(silu_mul(g.detach(), u.detach(), False), ref.detach())
    d_gate, d_up = silu_mul_grad(g.detach(), u.detach(), d, False)
    torch.testing.assert_close(d_gate, g.grad)
    torch.testing.assert_close(d_up, u.grad)

    norm = tiny_llama(torch.float64, "cpu").model.norm
    torch.nn.init.normal_(norm.weight, 1.0, 0.1)
    h = torch.randn(7, 128, dtype=torch.float64, requires_grad=True)
    ref = norm(h)
    ref.backward(d[:, :1].expand(7, 128) * torch.linspace(-1, 1, 128, dtype=torch.float64))
    out, state = rms_norm(h.detach(), norm.weight.detach(), norm.variance_epsilon, False)
    torch.testing.assert_close(out, ref.detach())
    grad = rms_norm_grad(d[:, :1].expand(7, 128) * torch.linspace(-1, 1, 128, dtype=torch.float64), h.detach(),
                         norm.weight.detach(), state)
    torch.testing.assert_close(grad, h.grad, rtol=1e-6, atol=1e-6)  # statistics in fp32, as in transformers
    assert state.without_rstd().rstd is None and state.without_rstd().with_rstd(state.rstd) == state


def test_dropped_is_x_times_the_keep_mask_in_float64():
    x = torch.randn(6, 40, dtype=torch.float64)
    torch.testing.assert_close(fused_lora.dropped(x, 0.3, 99), x * fused_lora.keep_mask(x, 0.3, 99))
    assert int((fused_lora.dropped(x, 0.3, 99) == 0).sum()) > 0


def test_a_host_seed_unless_device_seeds_on_cuda():
    assert isinstance(fused_lora.new_seed(torch.device("cpu"), on_device=True), int)  # no CUDA: a host seed


def test_bf16_tables_are_exact_and_leave_other_tables_alone():
    from lorafleet.train.fast.bf16_tables import store_tables_in_bf16

    model = tiny_llama(torch.bfloat16, "cpu").float()  # fp32 tables holding bf16 values, as after kbit prep
    for p in model.parameters():
        p.requires_grad_(False)
    ids, _ = batch("cpu")
    ref_embed = model.get_input_embeddings()(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_logits = model(input_ids=ids).logits
    hook = store_tables_in_bf16(model)
    assert hook is not None
    assert model.get_input_embeddings().weight.dtype == model.get_output_embeddings().weight.dtype == torch.bfloat16
    embed = model.get_input_embeddings()(ids)
    assert embed.dtype == torch.float32 and torch.equal(embed, ref_embed)  # the residual stream stays fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=ids).logits, ref_logits)
    hook.remove()
    assert model.get_input_embeddings()(ids).dtype == torch.bfloat16

    other = tiny_llama(torch.float32, "cpu")  # fp32 values that bf16 cannot hold: left alone
    for p in other.parameters():
        p.requires_grad_(False)
    assert store_tables_in_bf16(other) is None
    assert other.get_input_embeddings().weight.dtype == torch.float32


def test_capture_problem_names_what_keeps_a_pass_from_a_cuda_graph():
    assert capture_problem("none") is None
    assert "fp16" in capture_problem("none", loss_scaling=True)
    assert "packing" in capture_problem("none", packing=True)
    assert "attention" in capture_problem("attention") and "attention" in capture_problem("attention", dropout=True)
    # Offload recomputes from host buffers the graph addresses directly: capturable unless dropout would be redrawn.
    assert capture_problem("offload") is None
    assert "offload with dropout" in capture_problem("offload", dropout=True)
    assert capture_problem("none", dropout=True) is None  # no recompute: each mask is drawn once, in the graph


def test_power_of_two_parts_cover_a_size_exactly():
    from lorafleet.train.fast.offload import power_of_two_parts

    for n in (1, 2, 3, 1000, 286720 * 4096, 2**31):
        parts = power_of_two_parts(n)
        assert sum(parts) == n and all(p & (p - 1) == 0 for p in parts) and len(set(parts)) == len(parts)
