"""The decode-time MoE kernels on CUDA: the cases of tests/moe_kernel_cases.py with the
Qwen3-30B-A3B layer's shapes added, CUDA-graph replay following new routing, and a decode
step of the engine's MoE block on the new kernels against the same block on eager routing
and the grouped kernel."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_cases_on_cuda():
    from tests.moe_kernel_cases import run_all

    run_all(torch.device("cuda"), big=True)


def test_cuda_graph_replay_follows_new_logits():
    from engine.kernels.moe_gemv import moe_gemv

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 256, device="cuda", generator=g).bfloat16()
    logits = torch.randn(2, 128, device="cuda", generator=g).bfloat16()
    gate_up = (0.05 * torch.randn(128, 256, 256, device="cuda", generator=g)).bfloat16()
    down = (0.05 * torch.randn(128, 256, 128, device="cuda", generator=g)).bfloat16()
    moe_gemv(x, logits, gate_up, down, 8, True)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = moe_gemv(x, logits, gate_up, down, 8, True)[0]
    x2 = torch.randn(2, 256, device="cuda", generator=g).bfloat16()
    logits2 = torch.randn(2, 128, device="cuda", generator=g).bfloat16()
    x.copy_(x2)
    logits.copy_(logits2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, moe_gemv(x2, logits2, gate_up, down, 8, True)[0])


@pytest.mark.parametrize("num_tokens", [1, 4, 9])
def test_block_fused_routing_matches_eager_routing(num_tokens):
    """SparseMoeBlock with use_fused_kernels (moe_gemv at <= 4 tokens, Triton routing and the
    grouped kernel above) against the same block routed eagerly. fp32, so that router logits
    do not tie (equal bf16 logits may pick either expert: moe_routing's docstring)."""
    from engine.model.layers.moe import SparseMoeBlock
    from engine.model.named_shapes import NAMED_MODELS

    config = NAMED_MODELS["qwen3-30b-a3b"]
    torch.manual_seed(num_tokens)
    with torch.device("cuda"):
        block = SparseMoeBlock(config)
        with torch.no_grad():
            for p in block.parameters():
                p.normal_(0, 0.02)
        x = torch.randn(num_tokens, config.hidden_size)
    with torch.inference_mode():
        ref = block(x)
        block.use_fused_kernels()
        got = block(x)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
