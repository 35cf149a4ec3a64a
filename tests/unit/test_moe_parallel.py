"""MoE under tensor and expert parallelism (two processes, gloo): TP=2 (each rank a slice of
every expert) and TP=2 with EP=2 (each rank half the experts) give EP=1/TP=1's greedy tokens,
fp32; the KV layout is the same with and without EP."""

import pytest

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.model.moe_parallel import check_moe_parallel
from engine.model.named_shapes import named_model
from tests.helpers import random_prompts

KWARGS = dict(device="cpu", dtype="float32", seed=5, kv_cache_memory_bytes=16 << 20)
PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _tokens(model: str, prompts, **kwargs):
    with LLM(model, **KWARGS, **kwargs) as llm:
        experts = llm.engine.runner.model.model.layers[0].mlp.experts
        layout = (llm.engine.runner.layout, tuple(experts.gate_up_proj.shape))
        return [o.token_ids for o in llm.generate(prompts, PARAMS)], layout


@pytest.mark.parametrize("model", ["random:tiny-qwen3-moe", "random:tiny-qwen2-moe"])
def test_tp2_and_ep2_match_single_rank(model):
    prompts = random_prompts(5, 512, 4, 50, seed=22)
    expected, _ = _tokens(model, prompts)
    tp2, tp_layout = _tokens(model, prompts, tensor_parallel_size=2)
    ep2, ep_layout = _tokens(model, prompts, tensor_parallel_size=2, expert_parallel_size=2)
    assert tp2 == expected
    assert ep2 == expected
    assert ep_layout[0] == tp_layout[0]  # EP leaves the KV cache as attention's TP made it
    assert tp_layout[1] == (8, 32, 64)  # rank 0: all 8 experts, half of each (2I = 64 -> 32)
    assert ep_layout[1] == (4, 64, 64)  # rank 0: experts 0-3, whole


def test_ep_must_divide_tp_and_the_experts():
    with pytest.raises(ValueError, match="must divide tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=2, expert_parallel_size=4)
    tiny = named_model("tiny-qwen3-moe")  # 8 experts
    with pytest.raises(ValueError, match="num_experts=8"):
        check_moe_parallel(tiny, 16, 16)
    with pytest.raises(ValueError, match="dense"):
        check_moe_parallel(named_model("tiny-llama-tp"), 2, 2)
