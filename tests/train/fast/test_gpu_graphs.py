"""CUDA-graph passes (fast/graphs.py) compute what eager passes compute. Marked ``gpu``."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from fast_models import batch, lora_grads, max_rel_err, nf4_tiny_llama, speedup_config, tiny_llama, with_lora

from lorafleet.train.fast import enable_speedups, hidden_state_loss_sum
from lorafleet.train.fast.graphs import PassGraphs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _graph_runner(model, capture_after: int) -> PassGraphs:
    def loss_fn(inputs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return hidden_state_loss_sum(model, inputs["input_ids"], inputs["labels"])[0]
    return PassGraphs(loss_fn, [p for p in model.parameters() if p.requires_grad], capture_after=capture_after)


@pytest.mark.parametrize("recompute", ["none", "offload"])
def test_graph_replays_compute_what_eager_passes_compute_on_nf4(recompute: str):
    """Dropout off: three passes through a captured graph (the first eager, then two replays) give
    the losses and accumulated gradients of three eager passes; with offload, the replays copy each layer's
    input to the same pinned host buffers and recompute the layer from them."""
    pytest.importorskip("triton", reason="graphed passes draw dropout masks with Triton")
    ids, labels = batch("cuda")
    base = nf4_tiny_llama()
    results = []
    for capture_after in (10**6, 1):  # never captured; captured after its first (eager) pass
        model = with_lora(copy.deepcopy(base))
        plan = enable_speedups(model, speedup_config(quantization="nf4", recompute=recompute), "bf16", 1,
                               ids.shape[1]).plan
        assert plan.recompute == recompute and plan.fused_loss and plan.cuda_graphs, plan.reasons
        runner = _graph_runner(model, capture_after)
        losses = [float(runner.run({"input_ids": ids, "labels": labels}, 0.01)) for _ in range(3)]
        results.append((losses, lora_grads(model), runner))
    (eager_losses, eager_grads, eager), (losses, grads, graphed) = results
    assert eager.replays == 0 and graphed.replays == 2 and len(graphed.graphs) == 1
    assert losses == pytest.approx(eager_losses, rel=1e-6)
    assert max_rel_err(eager_grads, grads) < 1e-5  # three passes' gradients added up, in the same tensors


def test_graph_replays_draw_new_dropout_masks():
    pytest.importorskip("triton", reason="graphed passes draw dropout masks with Triton")
    ids, labels = batch("cuda")
    model = with_lora(tiny_llama(torch.bfloat16, "cuda"), dropout=0.3)
    plan = enable_speedups(model, speedup_config(lora_dropout=0.3, recompute="none"), "bf16", 1, ids.shape[1]).plan
    assert plan.cuda_graphs, plan.reasons  # the dropout kernel passed its check on this device
    runner = _graph_runner(model, 1)
    losses = [float(runner.run({"input_ids": ids, "labels": labels}, 0.0)) for _ in range(4)]
    assert runner.replays == 3
    assert len(set(losses[1:])) == 3  # same batch, fresh masks at every replay
    model.eval()  # no dropout: the loss every replay scatters around
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        clean = float(hidden_state_loss_sum(model, ids, labels)[0])
    assert all(abs(loss - clean) / clean < 0.2 for loss in losses)


def test_close_gives_the_graphs_pool_back():
    """A captured pass keeps its intermediates in the graphs' private pool between replays; ``close`` (what
    ``lorafleet train`` calls when training ends) lets ``empty_cache`` hand that memory to the device."""
    width = 4096
    weight = torch.randn(width, width, device="cuda", requires_grad=True)

    def loss_fn(inputs):  # about 4 intermediates of 64 MiB each stay in the pool
        h = inputs["x"] @ weight
        return (torch.tanh(h) @ weight).square().sum()

    runner = PassGraphs(loss_fn, [weight], capture_after=1)
    x = torch.randn(width, width, device="cuda")
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    for _ in range(3):
        runner.run({"x": x}, 1.0)
    assert runner.replays == 2
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved() - before
    assert held >= 128 * 2**20  # the pool, the static input and the gradient
    runner.close()
    gc.collect()
    torch.cuda.empty_cache()
    after = torch.cuda.memory_reserved() - before
    assert after <= held - 128 * 2**20, (held, after)  # the pool is gone; the gradient stays with the weight
    assert float(runner.run({"x": x}, 1.0)) > 0 and runner.replays == 2  # later passes run eagerly


def test_offload_keeps_its_memory_saving_when_captured():
    """A captured offload pass keeps one layer's working set in the graphs' pool, not every layer's activations:
    its pool is a small part of a captured pass without recompute (0.15 of it on the H200, 12 layers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=1024, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096)
    ids = torch.randint(0, 512, (2, 2048), device="cuda")
    pools = {}
    for recompute in ("offload", "none"):
        torch.manual_seed(0)
        model = with_lora(LlamaForCausalLM(config).to("cuda", torch.bfloat16))
        plan = enable_speedups(model, speedup_config(recompute=recompute), "bf16", 1, ids.shape[1]).plan
        assert plan.recompute == recompute and plan.cuda_graphs, plan.reasons
        runner = _graph_runner(model, capture_after=1)
        runner.run({"input_ids": ids, "labels": ids}, 1e-3)  # eager, then captured
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved()
        runner.close()
        gc.collect()
        torch.cuda.empty_cache()
        pools[recompute] = before - torch.cuda.memory_reserved()
        del model, runner
    assert 0 < pools["offload"] <= 0.3 * pools["none"], pools


def test_captured_passes_attend_without_a_mask():
    """Graphed passes carry no attention mask. While a graph is captured transformers cannot prove the rows unpacked
    and builds a full causal mask; the fused layers drop it, so the captured attention is the causal kernel (flash
    attention, which refuses any mask, captures the pass), and the replays compute what eager passes compute."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ids, labels = batch("cuda")
    results = []
    for capture_after in (10**6, 1):
        model = with_lora(tiny_llama(torch.bfloat16, "cuda"))
        plan = enable_speedups(model, speedup_config(recompute="none"), "bf16", 1, ids.shape[1]).plan
        assert plan.cuda_graphs, plan.reasons
        runner = _graph_runner(model, capture_after)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            losses = [float(runner.run({"input_ids": ids, "labels": labels}, 0.01)) for _ in range(3)]
        results.append((losses, lora_grads(model), runner))
    (eager_losses, eager_grads, _), (losses, grads, graphed) = results
    assert graphed.failure is None and graphed.replays == 2, graphed.failure
    assert losses == pytest.approx(eager_losses, rel=1e-6)
    assert max_rel_err(eager_grads, grads) < 1e-5
