"""The fused MoE Triton kernel against the CPU reference path (CUDA only).

bf16: the kernel rounds SiLU(gate) * up and each slot's output to bf16, the reference is fp32
on the same bf16 weights and inputs: the tolerance is 2% of the output's largest magnitude and
a relative L2 error under 1%. fp32 (IEEE dot products): 1e-5 absolute.
"""

import pytest
import torch

pytestmark = pytest.mark.gpu


def _case(num_tokens, num_experts, top_k, hidden, inter, dtype, seed=0, num_local=None):
    from engine.model.layers.moe import route

    g = torch.Generator(device="cuda").manual_seed(seed)
    num_local = num_local or num_experts
    x = torch.randn(num_tokens, hidden, device="cuda", generator=g).to(dtype)
    gate_up = (0.05 * torch.randn(num_local, 2 * inter, hidden, device="cuda", generator=g)).to(dtype)
    down = (0.05 * torch.randn(num_local, hidden, inter, device="cuda", generator=g)).to(dtype)
    weights, ids = route(torch.randn(num_tokens, num_experts, device="cuda", generator=g),
                         top_k, renormalize=True)
    return x, gate_up, down, weights, ids


def _reference(x, gate_up, down, weights, ids, start=0):
    from engine.model.layers.moe import experts_reference

    return experts_reference(x.float().cpu(), gate_up.float().cpu(), down.float().cpu(),
                             weights.cpu(), ids.cpu(), start)


# (tokens, experts, top_k, hidden, intermediate): the Qwen3-30B-A3B layer at decode batch 1,
# 8 and 64, a prefill chunk (the torch align path, > 1024 slots), and odd sizes that mask.
SHAPES = [(1, 128, 8, 2048, 768), (8, 128, 8, 2048, 768), (64, 128, 8, 2048, 768),
          (600, 128, 8, 2048, 768), (37, 8, 2, 200, 72)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{s[0]}-E{s[1]}-k{s[2]}" for s in SHAPES])
def test_bf16_matches_reference(shape):
    from engine.kernels.fused_moe import fused_experts

    x, gate_up, down, weights, ids = _case(*shape, dtype=torch.bfloat16)
    got = fused_experts(x, gate_up, down, weights, ids).float().cpu()
    ref = _reference(x, gate_up, down, weights, ids)
    assert (got - ref).abs().max() <= 0.02 * ref.abs().max()
    assert (got - ref).norm() <= 0.01 * ref.norm()


@pytest.mark.parametrize("num_tokens", [5, 300])
def test_fp32_and_expert_parallel_slice(num_tokens):
    """A rank holding experts 4..7 of 8 gives exactly those experts' share."""
    from engine.kernels.fused_moe import fused_experts

    x, gate_up, down, weights, ids = _case(num_tokens, 8, 4, 128, 64, torch.float32,
                                           seed=1, num_local=4)
    got = fused_experts(x, gate_up, down, weights, ids, expert_start=4, num_experts=8).cpu()
    ref = _reference(x, gate_up, down, weights, ids, start=4)
    assert (got - ref).abs().max() < 1e-5


def test_cuda_graph_replay_follows_new_routing():
    from engine.kernels.fused_moe import fused_experts

    x, gate_up, down, weights, ids = _case(8, 128, 8, 256, 128, torch.bfloat16)
    static = [x.clone(), weights.clone(), ids.clone()]
    fused_experts(static[0], gate_up, down, static[1], static[2])  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_experts(static[0], gate_up, down, static[1], static[2])
    x2, _, _, weights2, ids2 = _case(8, 128, 8, 256, 128, torch.bfloat16, seed=9)
    for t, new in zip(static, (x2, weights2, ids2), strict=True):
        t.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, fused_experts(x2, gate_up, down, weights2, ids2))


def test_engine_moe_on_cuda_matches_hf_with_graphs_and_overlap():
    """random:tiny-qwen3-moe on CUDA (fused kernel, graphs, overlapped loop) against HF on
    CPU, fp32."""
    from engine import LLM, SamplingParams
    from tests.helpers import engine_prompt_logits, random_prompts
    from tests.hf_reference import hf_greedy, hf_logits, hf_model_like

    torch.backends.cuda.matmul.allow_tf32 = False
    with LLM("random:tiny-qwen3-moe", device="cuda", dtype="float32", seed=7,
             kv_cache_memory_bytes=64 << 20) as llm:
        assert llm.engine.runner.graphs is not None and llm.engine.overlap is not None
        hf = hf_model_like(llm.engine)
        prompt = random_prompts(1, 512, 150, 150, seed=1)[0]
        diff = (engine_prompt_logits(llm.engine, prompt).cpu() - hf_logits(hf, prompt)).abs()
        assert diff.max().item() < 1e-4
        prompts = random_prompts(5, 512, 5, 40, seed=2)
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24,
                                                    ignore_eos=True))
        assert [o.token_ids for o in outs] == [hf_greedy(hf, p, 24) for p in prompts]
