"""On CUDA the speed-ups compute what plain transformers + PEFT computes, and each kernel passes its check.

Marked ``gpu``: skipped without CUDA (scripts/gpu-tests.sh runs them on a GPU machine).
"""

from __future__ import annotations

import copy

import pytest
import torch
from fast_models import batch, lora_grads, max_rel_err, nf4_tiny_llama, speedup_config, tiny_llama, with_lora

from lorafleet.train.fast import enable_speedups, fused_lora, hidden_state_loss_sum
from lorafleet.train.fast.fused_lora import LoraLinearFunction
from lorafleet.train.fast.kernels import rms_norm, rms_norm_grad, silu_mul, silu_mul_grad

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def cuda_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def run_steps(model, fast: bool, ids, labels, steps: int = 3) -> tuple[list[float], dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if fast:
                total, count = hidden_state_loss_sum(model, ids, labels)
                loss = total / count
            else:
                loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        grads = lora_grads(model)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses, grads


@pytest.mark.parametrize("mode", ["none", "attention", "offload"])
def test_speedups_match_plain_peft_on_cuda(mode):
    ids, labels = batch("cuda")
    base = tiny_llama(torch.bfloat16, "cuda")
    ref_losses, ref_grads = run_steps(with_lora(copy.deepcopy(base)), False, ids, labels)
    fast = with_lora(copy.deepcopy(base))
    path = enable_speedups(fast, speedup_config(recompute=mode, cuda_graphs=False), "bf16", 1, ids.shape[1])
    plan, patches = path.plan, path.patches
    assert plan.recompute == mode and patches.fused_lora_layers == 14 and patches.fused_mlps == 2
    assert plan.micro_batch == 2  # plenty of memory: the whole batch in one pass
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        assert not plan.triton_kernels
    else:
        assert plan.triton_kernels, plan.reasons  # the Triton kernels passed their check and are used
    losses, grads = run_steps(fast, True, ids, labels)
    assert max(abs(a - b) for a, b in zip(ref_losses, losses)) < 2e-2
    assert max_rel_err(ref_grads, grads) < 5e-2  # bf16 rounding order differs, nothing else


def test_triton_elementwise_kernels_match_torch_at_the_llama_8b_width():
    pytest.importorskip("liger_kernel", reason="the Triton kernels come from liger-kernel")
    from lorafleet.train.fast.kernels import triton_problem

    assert triton_problem(cuda_device()) is None
    g = torch.Generator(device="cuda").manual_seed(0)
    gate, up, d_act = (torch.randn(256, 14336, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    torch.testing.assert_close(silu_mul(gate, up, True), silu_mul(gate, up, False))  # same rounding rule as eager
    fast = silu_mul_grad(gate.clone(), up.clone(), d_act, True)
    for got, ref in zip(fast, silu_mul_grad(gate, up, d_act, False)):
        torch.testing.assert_close(got, ref, rtol=1.6e-2, atol=1e-2)  # silu in fp32 vs rounded: last bf16 bit
    h = torch.randn(256, 4096, device="cuda", generator=g).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(4096, device="cuda", generator=g)).to(torch.bfloat16)
    (out, state), (ref, ref_state) = rms_norm(h, w, 1e-5, True), rms_norm(h, w, 1e-5, False)
    torch.testing.assert_close(out, ref, rtol=1.6e-2, atol=1e-2)
    dx = d_act[:, :4096].contiguous()
    torch.testing.assert_close(rms_norm_grad(dx.clone(), h, w, state), rms_norm_grad(dx, h, w, ref_state),
                               rtol=1.6e-2, atol=2e-2)
    h3, dx3 = h.view(2, 128, 4096), dx.view(2, 128, 4096)  # the attention block's (batch, seq, hidden) input
    out3, state3 = rms_norm(h3, w, 1e-5, True)
    torch.testing.assert_close(out3, out.view(2, 128, 4096))
    torch.testing.assert_close(rms_norm_grad(dx3, h3, w, state3), rms_norm_grad(dx, h, w, state).view(2, 128, 4096))


def test_speedups_with_dropout_and_nf4_train_and_are_reproducible():
    ids, labels = batch("cuda")
    base = nf4_tiny_llama()
    runs = []
    for _ in range(2):
        model = with_lora(copy.deepcopy(base), dropout=0.1)
        config = speedup_config(batch_size=1, lora_dropout=0.1, quantization="nf4", recompute="attention",
                                cuda_graphs=False)
        enable_speedups(model, config, "bf16", 1, ids.numel())
        torch.manual_seed(7)
        runs.append(run_steps(model, True, ids, labels, steps=4))
    plain = with_lora(copy.deepcopy(base), dropout=0.0)
    plain_losses, _ = run_steps(plain, False, ids, labels, steps=1)
    (losses, grads), (losses2, grads2) = runs
    assert losses == losses2 and max_rel_err(grads, grads2) == 0.0  # dropout masks come from seeded RNG
    assert abs(losses[0] - plain_losses[0]) < 5e-2  # same NF4 weights; only dropout noise differs
    assert losses[-1] < losses[0]


def test_triton_dropout_is_dropout_and_the_fused_lora_uses_its_mask():
    """With device seeds (the CUDA-graph path) the fused LoRA linear drops exactly the Triton kernel's mask."""
    pytest.importorskip("triton", reason="the dropout kernel is Triton")
    from lorafleet.train.fast import dropout_kernel
    from lorafleet.train.fast.kernels import dropout_problem

    assert dropout_problem(cuda_device()) is None
    x = torch.randn(3, 37, 256, device="cuda", dtype=torch.float32, requires_grad=True)
    base = torch.nn.Linear(256, 96, bias=False, device="cuda")
    a = torch.randn(8, 256, device="cuda", requires_grad=True)
    b = torch.randn(96, 8, device="cuda", requires_grad=True)
    torch.manual_seed(11)
    got = LoraLinearFunction.apply(x, a, b, base, 2.0, 0.3, False, True)
    got.backward(torch.ones_like(got))
    got_grads = (x.grad.clone(), a.grad.clone(), b.grad.clone())
    x.grad, a.grad, b.grad = None, None, None
    torch.manual_seed(11)
    seed = fused_lora.new_seed(x.device, on_device=True)
    assert isinstance(seed, torch.Tensor)  # drawn on the device
    mask = dropout_kernel.dropped(torch.ones(3 * 37, 256, device="cuda"), 0.3, seed).reshape(x.shape)
    assert 0.6 < float(mask.mean()) < 0.8 and set(mask.unique().tolist()) == {0.0, 1.0}
    ref = base(x) + ((x * mask / 0.7) @ a.t() @ b.t()) * 2.0
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # fp32 cuBLAS, another association order
    for r, g in zip((x.grad, a.grad, b.grad), got_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


def test_triton_rope_matches_transformers_and_leaves_transformers_alone():
    pytest.importorskip("liger_kernel", reason="the RoPE kernel comes from liger-kernel")
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.llama import modeling_llama

    from lorafleet.train.fast.kernels import rope_problem

    name = modeling_llama.__name__
    assert rope_problem(cuda_device(), name) is None
    original = modeling_llama.apply_rotary_pos_emb
    ids, labels = batch("cuda")
    model = with_lora(tiny_llama(torch.bfloat16, "cuda"))
    path = enable_speedups(model, speedup_config(cuda_graphs=False), "bf16", 1, ids.shape[1])
    assert path.plan.rope_kernel, path.plan.reasons
    layer = model.get_base_model().model.layers[0]
    assert layer.settings.rope is liger_rotary_pos_emb  # the fused attention calls the kernel itself
    with torch.autocast("cuda", dtype=torch.bfloat16):
        hidden_state_loss_sum(model, ids, labels)[0].backward()
    assert modeling_llama.apply_rotary_pos_emb is original  # transformers' module is never touched


def test_a_device_seed_draws_the_mask_of_its_host_value():
    pytest.importorskip("triton", reason="the dropout kernel is Triton")
    from lorafleet.train.fast import dropout_kernel

    x = torch.randn(5, 1000, device="cuda")
    seed = 2**40 + 7
    on_device = torch.tensor([seed], device="cuda", dtype=torch.int64)
    assert torch.equal(dropout_kernel.dropped(x, 0.3, seed), dropout_kernel.dropped(x, 0.3, on_device))
    t = torch.randn_like(x)
    assert torch.equal(dropout_kernel.add_dropped_(x.clone(), t, 0.3, seed),
                       dropout_kernel.add_dropped_(x.clone(), t, 0.3, on_device))
    with pytest.raises(ValueError, match="int64"):
        dropout_kernel.dropped(x, 0.3, on_device.int())


def test_unsynced_adamw8bit_updates_exactly_like_paged_adamw8bit():
    bnb = pytest.importorskip("bitsandbytes", reason="the 8-bit optimizers are bitsandbytes'")
    from lorafleet.train.fast.optim import AdamW8bit

    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(32, 4096), (14336, 32), (8, 8)]  # 8-bit state, and one below the 8-bit size floor
    start = [torch.randn(s, device="cuda", generator=g) for s in shapes]
    grads = [[torch.randn(s, device="cuda", generator=g) for s in shapes] for _ in range(3)]
    finals = []
    for cls in (bnb.optim.PagedAdamW8bit, AdamW8bit):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls(params, lr=1e-2, weight_decay=0.01)
        for step in grads:
            for p, grad in zip(params, step):
                p.grad = grad.clone()
            opt.step()
        finals.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*finals))
    assert not any(torch.equal(a, b) for a, b in zip(finals[1], start))
