"""The CUDA training speed-ups compute what plain transformers + PEFT computes.

GPU tests are marked ``gpu`` and skip on machines without CUDA; the CPU tests check the fused
functions in float64 against PEFT and that ``apply_speedups`` leaves a CPU model alone.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from lorafleet.train import fused_lora
from lorafleet.train import speedups as S
from lorafleet.train.fused_lora import LoraLinearFunction, NormLoraMLPFunction
from lorafleet.train.kernels import rms_norm, rms_norm_grad, silu_mul, silu_mul_grad
from lorafleet.train.plan import ModelDims, activation_bytes_per_token, plan_micro_batch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_llama(dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def with_lora(model: LlamaForCausalLM, dropout: float = 0.0):
    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules="all-linear",
                                            use_rslora=True, task_type="CAUSAL_LM"))
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # non-zero B so every LoRA gradient path is exercised
            torch.nn.init.normal_(param, std=0.05)
    return peft.train()


def batch(device: str, seq: int = 33):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 512, (2, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 3] = -100
    return ids.to(device), labels.to(device)


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def max_rel_err(ref: dict, got: dict) -> float:
    assert ref.keys() == got.keys() and ref
    return max(float((ref[k] - got[k]).norm() / ref[k].norm()) for k in ref)


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


LLAMA_8B = ModelDims(hidden=4096, intermediate=14336, kv_dim=1024, layers=32)


def test_activation_estimate_matches_the_h200_measurement():
    # Peaks measured on the H200 (BENCHMARKS.md): 2.57 MB/token with attention-only recompute and
    # 3.51 MB/token without recompute, eager elementwise kernels. The estimate may exceed them a little.
    attention = activation_bytes_per_token(LLAMA_8B, "attention")
    none = activation_bytes_per_token(LLAMA_8B, "none")
    assert 2.57e6 <= attention <= 2.57e6 * 1.05
    assert 3.51e6 <= none <= 3.51e6 * 1.05
    assert activation_bytes_per_token(LLAMA_8B, "attention", triton=True) < attention
    assert activation_bytes_per_token(LLAMA_8B, "offload") < activation_bytes_per_token(LLAMA_8B, "hf") < attention


def test_fp32_residual_stream_is_counted():
    # A QLoRA model with fp32 embeddings carries the residual stream in fp32: layer input, normed input and
    # mid residual kept per layer, plus the head's hidden state, take 2 more bytes per element. Ignoring this
    # made a plan overshoot (a)'s peak by 0.4 GB on the H200 (BENCHMARKS.md).
    h, layers = LLAMA_8B.hidden, LLAMA_8B.layers
    extra = activation_bytes_per_token(LLAMA_8B, "none", True, 4) - activation_bytes_per_token(LLAMA_8B, "none", True)
    assert extra == 2 * (3 * h * layers + 2 * h)
    budget = 2048 * activation_bytes_per_token(LLAMA_8B, "none", True)
    assert plan_micro_batch(2, 2048, LLAMA_8B, budget, triton=True) == (1, "none")
    assert plan_micro_batch(2, 2048, LLAMA_8B, budget, triton=True, residual_bytes=4) == (1, "attention")


def test_plan_prefers_the_largest_micro_batch_then_the_least_recompute():
    per_none = activation_bytes_per_token(LLAMA_8B, "none")
    per_attn = activation_bytes_per_token(LLAMA_8B, "attention")
    # Two rows fit only with attention recompute; one row would fit without any: two rows win.
    budget = 2 * 2048 * per_attn
    assert 2048 * per_none <= budget < 2 * 2048 * per_none
    assert plan_micro_batch(2, 2048, LLAMA_8B, budget) == (2, "attention")
    assert plan_micro_batch(2, 2048, LLAMA_8B, 2 * 2048 * per_none) == (2, "none")
    assert plan_micro_batch(2, 2048, LLAMA_8B, budget - 1) == (1, "none")
    assert plan_micro_batch(6, 2048, LLAMA_8B, 3 * 2048 * per_none) == (3, "none")  # divisors only
    assert plan_micro_batch(1, 2048, LLAMA_8B, 2048 * per_attn - 1) == (1, "offload")
    # Fixed choices are kept as given.
    assert plan_micro_batch(4, 2048, LLAMA_8B, 0, micro_batch=2) == (2, "offload")
    assert plan_micro_batch(4, 2048, LLAMA_8B, 10**12, checkpointing="attention") == (4, "attention")


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


def _loss_and_grads(model, ids, labels) -> tuple[float, dict]:
    total, count = S.hidden_state_loss_sum(model, ids, labels)
    (total / count).backward()
    return float(total.detach() / count), lora_grads(model)


@pytest.mark.parametrize("mode", ["none", "attention"])
def test_fused_layers_match_peft_in_float64_and_dequantize_less(mode, monkeypatch):
    ids, labels = batch("cpu")
    base = tiny_llama(torch.float64, "cpu")
    ref_loss, ref_grads = _loss_and_grads(with_lora(copy.deepcopy(base)), ids, labels)
    fast = with_lora(copy.deepcopy(base))
    assert S.fuse_lora_linears(fast) == 14 and S.fuse_layers(fast, mode) == 2
    calls = []
    real = fused_lora.dense_weight
    monkeypatch.setattr(fused_lora, "dense_weight", lambda *a: calls.append(1) or real(*a))  # counts, then calls
    loss, grads = _loss_and_grads(fast, ids, labels)
    assert abs(loss - ref_loss) < 1e-9
    assert max_rel_err(ref_grads, grads) < 1e-5  # RMSNorm statistics are fp32 (as in transformers), rest float64
    # MLP: 3 forward + 3 backward per layer. Attention without recompute: 4 forward + 4 backward, except
    # layer 0 whose q/k/v input needs no gradient (1 backward). With recompute the backward reuses the
    # recomputation's weights: 4 forward + 4 recompute and no more (it was 33 before that change).
    assert len(calls) == {"none": (4 + 1 + 6) + (4 + 4 + 6), "attention": 2 * (4 + 4 + 6)}[mode]
    S.remove_speedups(fast)
    assert not any("forward" in m.__dict__ for m in fast.modules())


def test_apply_speedups_is_a_no_op_on_cpu():
    peft = with_lora(tiny_llama(torch.float32, "cpu"))
    applied = S.apply_speedups(peft, S.SpeedupSettings(), 64)
    assert applied.fused_lora_layers == 0 and applied.checkpointing == "hf"
    assert not any("forward" in m.__dict__ for m in peft.modules())


def run_steps(model, fast: bool, ids, labels, steps: int = 3) -> tuple[list[float], dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if fast:
                total, count = S.hidden_state_loss_sum(model, ids, labels)
                loss = total / count
            else:
                loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        grads = lora_grads(model)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses, grads


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", ["none", "attention", "offload"])
def test_speedups_match_plain_peft_on_cuda(mode):
    ids, labels = batch("cuda")
    base = tiny_llama(torch.bfloat16, "cuda")
    ref_losses, ref_grads = run_steps(with_lora(copy.deepcopy(base)), False, ids, labels)
    fast = with_lora(copy.deepcopy(base))
    applied = S.apply_speedups(fast, S.SpeedupSettings(checkpointing=mode), ids.shape[1], rows=ids.shape[0])
    assert applied.checkpointing == mode and applied.fused_lora_layers == 14 and applied.fused_mlps == 2
    assert applied.micro_batch == 2  # plenty of memory: the whole batch in one pass
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        assert not applied.fused_elementwise
    else:
        assert applied.fused_elementwise, applied.notes  # the Triton kernels passed their check and are used
    losses, grads = run_steps(fast, True, ids, labels)
    assert max(abs(a - b) for a, b in zip(ref_losses, losses)) < 2e-2
    assert max_rel_err(ref_grads, grads) < 5e-2  # bf16 rounding order differs, nothing else


@pytest.mark.gpu
@needs_cuda
def test_triton_elementwise_kernels_match_torch_at_the_llama_8b_width():
    pytest.importorskip("liger_kernel", reason="the Triton kernels come from liger-kernel")
    from lorafleet.train.kernels import triton_problem

    assert triton_problem(torch.device("cuda", torch.cuda.current_device())) is None
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


def nf4_tiny_llama() -> LlamaForCausalLM:
    """The tiny Llama on CUDA with its decoder linears as bitsandbytes NF4 (skips without bitsandbytes)."""
    bnb = pytest.importorskip("bitsandbytes", reason="NF4 needs bitsandbytes")
    base = tiny_llama(torch.bfloat16, "cuda")
    for layer in base.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, sub in list(parent.named_children()):
                if isinstance(sub, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(sub.in_features, sub.out_features, bias=False, compute_dtype=torch.bfloat16,
                                          quant_type="nf4", device="meta")
                    q.weight = bnb.nn.Params4bit(sub.weight.data, requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True).to("cuda")
                    setattr(parent, name, q)
    base.is_loaded_in_4bit = True
    return base


@pytest.mark.gpu
@needs_cuda
def test_speedups_with_dropout_and_nf4_train_and_are_reproducible():
    ids, labels = batch("cuda")
    base = nf4_tiny_llama()
    runs = []
    for _ in range(2):
        model = with_lora(copy.deepcopy(base), dropout=0.1)
        S.apply_speedups(model, S.SpeedupSettings(checkpointing="attention"), ids.numel())
        torch.manual_seed(7)
        runs.append(run_steps(model, True, ids, labels, steps=4))
    plain = with_lora(copy.deepcopy(base), dropout=0.0)
    plain_losses, _ = run_steps(plain, False, ids, labels, steps=1)
    (losses, grads), (losses2, grads2) = runs
    assert losses == losses2 and max_rel_err(grads, grads2) == 0.0  # dropout masks come from seeded RNG
    assert abs(losses[0] - plain_losses[0]) < 5e-2  # same NF4 weights; only dropout noise differs
    assert losses[-1] < losses[0]


def test_dropped_is_x_times_the_keep_mask_in_float64():
    x = torch.randn(6, 40, dtype=torch.float64)
    torch.testing.assert_close(fused_lora.dropped(x, 0.3, 99), x * fused_lora.keep_mask(x, 0.3, 99))
    assert int((fused_lora.dropped(x, 0.3, 99) == 0).sum()) > 0


def test_bf16_tables_are_exact_and_leave_other_tables_alone():
    from lorafleet.train.bf16_tables import remove_embedding_hook, store_tables_in_bf16

    model = tiny_llama(torch.bfloat16, "cpu").float()  # fp32 tables holding bf16 values, as after kbit prep
    for p in model.parameters():
        p.requires_grad_(False)
    ids, _ = batch("cpu")
    ref_embed = model.get_input_embeddings()(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_logits = model(input_ids=ids).logits
    assert store_tables_in_bf16(model)
    assert model.get_input_embeddings().weight.dtype == model.get_output_embeddings().weight.dtype == torch.bfloat16
    embed = model.get_input_embeddings()(ids)
    assert embed.dtype == torch.float32 and torch.equal(embed, ref_embed)  # the residual stream stays fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=ids).logits, ref_logits)
    remove_embedding_hook(model)
    assert model.get_input_embeddings()(ids).dtype == torch.bfloat16

    other = tiny_llama(torch.float32, "cpu")  # fp32 values that bf16 cannot hold: left alone
    for p in other.parameters():
        p.requires_grad_(False)
    assert not store_tables_in_bf16(other)
    assert other.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.gpu
@needs_cuda
def test_triton_dropout_is_dropout_and_the_fused_lora_uses_its_mask():
    pytest.importorskip("triton", reason="the dropout kernel is Triton")
    from lorafleet.train import dropout_kernel
    from lorafleet.train.kernels import dropout_problem

    assert dropout_problem(torch.device("cuda", torch.cuda.current_device())) is None
    x = torch.randn(3, 37, 256, device="cuda", dtype=torch.float32, requires_grad=True)
    base = torch.nn.Linear(256, 96, bias=False, device="cuda")
    a = torch.randn(8, 256, device="cuda", requires_grad=True)
    b = torch.randn(96, 8, device="cuda", requires_grad=True)
    torch.manual_seed(11)
    got = LoraLinearFunction.apply(x, a, b, base, 2.0, 0.3, True)
    got.backward(torch.ones_like(got))
    got_grads = (x.grad.clone(), a.grad.clone(), b.grad.clone())
    x.grad, a.grad, b.grad = None, None, None
    torch.manual_seed(11)
    seed = fused_lora.new_seed()
    mask = dropout_kernel.dropped(torch.ones(3 * 37, 256, device="cuda"), 0.3, seed).reshape(x.shape)
    assert 0.6 < float(mask.mean()) < 0.8 and set(mask.unique().tolist()) == {0.0, 1.0}
    ref = base(x) + ((x * mask / 0.7) @ a.t() @ b.t()) * 2.0
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # fp32 cuBLAS, another association order
    for r, g in zip((x.grad, a.grad, b.grad), got_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_triton_rope_matches_transformers_and_is_scoped():
    pytest.importorskip("liger_kernel", reason="the RoPE kernel comes from liger-kernel")
    from transformers.models.llama import modeling_llama

    from lorafleet.train.kernels import rope_problem, triton_rope

    name = modeling_llama.__name__
    assert rope_problem(torch.device("cuda", torch.cuda.current_device()), name) is None
    original = modeling_llama.apply_rotary_pos_emb
    with triton_rope(name):
        assert modeling_llama.apply_rotary_pos_emb is not original
    assert modeling_llama.apply_rotary_pos_emb is original  # only inside the fused attention call


@pytest.mark.gpu
@needs_cuda
def test_a_device_seed_draws_the_mask_of_its_host_value():
    pytest.importorskip("triton", reason="the dropout kernel is Triton")
    from lorafleet.train import dropout_kernel

    x = torch.randn(5, 1000, device="cuda")
    seed = 2**40 + 7
    on_device = torch.tensor([seed], device="cuda", dtype=torch.int64)
    assert torch.equal(dropout_kernel.dropped(x, 0.3, seed), dropout_kernel.dropped(x, 0.3, on_device))
    t = torch.randn_like(x)
    assert torch.equal(dropout_kernel.add_dropped_(x.clone(), t, 0.3, seed),
                       dropout_kernel.add_dropped_(x.clone(), t, 0.3, on_device))
    with pytest.raises(ValueError, match="int64"):
        dropout_kernel.dropped(x, 0.3, on_device.int())


def _graph_runner(model, capture_after: int):
    from lorafleet.train.graphs import PassGraphs

    def loss_fn(inputs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return S.hidden_state_loss_sum(model, inputs["input_ids"], inputs["labels"])[0]
    return PassGraphs(loss_fn, [p for p in model.parameters() if p.requires_grad], capture_after=capture_after)


@pytest.mark.gpu
@needs_cuda
def test_graph_replays_compute_what_eager_passes_compute_on_nf4():
    """Dropout off: three passes through a captured graph (the first eager, then two replays) give
    the losses and accumulated gradients of three eager passes."""
    pytest.importorskip("triton", reason="graphed passes draw dropout masks with Triton")
    ids, labels = batch("cuda")
    base = nf4_tiny_llama()
    results = []
    for capture_after in (10**6, 1):  # never captured; captured after its first (eager) pass
        model = with_lora(copy.deepcopy(base))
        applied = S.apply_speedups(model, S.SpeedupSettings(checkpointing="none"), ids.shape[1], rows=2)
        assert applied.checkpointing == "none" and applied.fused_cross_entropy
        runner = _graph_runner(model, capture_after)
        losses = [float(runner.run({"input_ids": ids, "labels": labels}, 0.01)) for _ in range(3)]
        results.append((losses, lora_grads(model), runner))
    (eager_losses, eager_grads, eager), (losses, grads, graphed) = results
    assert eager.replays == 0 and graphed.replays == 2 and len(graphed.graphs) == 1
    assert losses == pytest.approx(eager_losses, rel=1e-6)
    assert max_rel_err(eager_grads, grads) < 1e-5  # three passes' gradients added up, in the same tensors


@pytest.mark.gpu
@needs_cuda
def test_graph_replays_draw_new_dropout_masks():
    pytest.importorskip("triton", reason="graphed passes draw dropout masks with Triton")
    ids, labels = batch("cuda")
    model = with_lora(tiny_llama(torch.bfloat16, "cuda"), dropout=0.3)
    S.apply_speedups(model, S.SpeedupSettings(checkpointing="none"), ids.shape[1], rows=2)
    runner = _graph_runner(model, 1)
    losses = [float(runner.run({"input_ids": ids, "labels": labels}, 0.0)) for _ in range(4)]
    assert runner.replays == 3
    assert len(set(losses[1:])) == 3  # same batch, fresh masks at every replay
    model.eval()  # no dropout: the loss every replay scatters around
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        clean = float(S.hidden_state_loss_sum(model, ids, labels)[0])
    assert all(abs(loss - clean) / clean < 0.2 for loss in losses)


@pytest.mark.gpu
@needs_cuda
def test_unsynced_adamw8bit_updates_exactly_like_paged_adamw8bit():
    bnb = pytest.importorskip("bitsandbytes", reason="the 8-bit optimizers are bitsandbytes'")
    from lorafleet.train.optim import AdamW8bit

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


def test_graphs_plan_prefers_no_recompute_over_a_larger_micro_batch():
    dims = ModelDims(hidden=4096, intermediate=14336, kv_dim=1024, layers=32)
    none_1 = 2048 * activation_bytes_per_token(dims, "none", True, 4)
    attention_2 = 2 * 2048 * activation_bytes_per_token(dims, "attention", True, 4)
    budget = max(none_1, attention_2)
    assert none_1 < attention_2 < 2 * none_1  # the case that matters: only one of the two fits at micro-batch 2
    assert plan_micro_batch(2, 2048, dims, budget, triton=True, residual_bytes=4) == (2, "attention")
    assert plan_micro_batch(2, 2048, dims, budget, triton=True, residual_bytes=4, no_recompute_first=True) == (1, "none")
    attention_1 = attention_2 // 2
    assert attention_1 < none_1
    assert plan_micro_batch(2, 2048, dims, attention_1, triton=True, residual_bytes=4,
                            no_recompute_first=True) == (1, "attention")  # nothing fits without recompute: as before


def test_capture_problem_names_what_keeps_a_pass_from_a_cuda_graph():
    from lorafleet.train.graphs import capture_problem

    assert capture_problem("none") is None
    assert "DDP" in capture_problem("none", distributed=True)
    assert "fp16" in capture_problem("none", loss_scaling=True)
    assert "packing" in capture_problem("none", packing=True)
    assert "attention" in capture_problem("attention") and "offload" in capture_problem("offload")


def test_power_of_two_parts_cover_a_size_exactly():
    from lorafleet.train.offload import power_of_two_parts

    for n in (1, 2, 3, 1000, 286720 * 4096, 2**31):
        parts = power_of_two_parts(n)
        assert sum(parts) == n and all(p & (p - 1) == 0 for p in parts) and len(set(parts)) == len(parts)
