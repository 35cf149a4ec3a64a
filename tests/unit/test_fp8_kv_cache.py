"""The FP8 KV cache on CPU: the demo model's greedy tokens and perplexity against the fp32-KV
engine, the cached-context path, and the compatibility record that keeps FP8 and full-precision
engines from exchanging blocks."""

import math

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from engine.model.layers import kv_quant
from engine.runner.kv_cache import kv_compat
from kv_transfer.handle import IncompatibleKVError
from proto.convert import handle_from_bytes, handle_to_bytes
from tests.helpers import engine_prompt_logits

TEXT = (
    "The river rose slowly through the night, and by morning the lower fields were under "
    "water. Farmers gathered at the bridge to watch the current carry branches, fences and "
    "the occasional barrel downstream. Nobody had seen a flood like it since the old mill "
    "burned down, and the talk soon turned to whether the dam upstream would hold. By noon "
    "the rain had stopped, the sun came out, and children were already throwing stones into "
    "the brown water as if nothing had happened."
)
SUBJECTS = ["the moon", "bread", "a violin", "Python", "volcanoes", "the Roman empire", "tea",
            "chess"]
ASKS = ["Tell me one fact about {}.", "Write a sentence about {}.", "Why is {} interesting?",
        "Describe {} in a few words.", "What should a child know about {}?",
        "Give me a question about {}.", "Explain {} to a friend.", "Is {} old?"]
PROMPTS = [[{"role": "user", "content": a.format(s)}] for s in SUBJECTS for a in ASKS]  # 64
GREEDY = SamplingParams(temperature=0, max_tokens=16)
DEMO = dict(device="cpu", dtype="float32", kv_cache_memory_bytes=64 << 20)


@pytest.fixture(scope="module")
def engines():
    with LLM("demo", **DEMO) as full, LLM("demo", kv_cache_dtype="fp8", **DEMO) as fp8:
        yield full, fp8


def test_fp8_kv_buffer_holds_one_byte_per_value(engines):
    full, fp8 = engines
    assert fp8.engine.runner.kv_buffer.dtype == torch.float8_e4m3fn
    assert fp8.engine.runner.kv_buffer.element_size() == 1
    assert full.engine.runner.layout.bytes_per_block == 4 * fp8.engine.runner.layout.bytes_per_block


def test_greedy_tokens_agree_with_fp32_kv_over_64_prompts(engines):
    """Two rates: prompts whose 16 greedy tokens are all identical (free-running: one flipped
    near-tie changes the rest), and top-1 agreement with the fp32-KV engine's own greedy
    continuation fed back (teacher-forced, every position counted). Seen on the demo model:
    34/64 identical, 95.8% top-1 (979/1022). For scale, the whole model in bf16 (fp32 KV
    reference) agrees 97.2% top-1 on the same positions."""
    full, fp8 = engines
    outs = full.chat(PROMPTS, GREEDY)
    got = [o.token_ids for o in fp8.chat(PROMPTS, GREEDY)]
    same = sum(o.token_ids == g for o, g in zip(outs, got, strict=True))
    agree = total = 0
    for o in outs:
        seq, n = list(o.prompt_token_ids) + list(o.token_ids), len(o.prompt_token_ids)
        top1 = engine_prompt_logits(fp8.engine, seq)[n - 1:-1].argmax(-1)
        agree += (top1 == torch.tensor(o.token_ids)).sum().item()
        total += len(o.token_ids)
    print(f"\nFP8 KV vs fp32 KV: {same}/64 prompts identical over 16 tokens, top-1 "
          f"agreement {agree}/{total} = {agree / total:.1%}")
    assert same >= 24 and agree / total >= 0.93


def perplexity(llm, token_ids) -> float:
    logits = engine_prompt_logits(llm.engine, token_ids)
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)
    nll = -logp.gather(1, torch.tensor(token_ids[1:])[:, None]).mean().item()
    return math.exp(nll)


def test_perplexity_on_a_fixed_text_within_one_percent(engines):
    full, fp8 = engines
    ids = full.tokenizer.encode(TEXT)
    ppl_full, ppl_fp8 = perplexity(full, ids), perplexity(fp8, ids)
    print(f"\nperplexity over {len(ids)} tokens: fp32 KV {ppl_full:.3f}, FP8 KV {ppl_fp8:.3f} "
          f"({ppl_fp8 / ppl_full - 1:+.2%})")
    assert ppl_fp8 != ppl_full  # the FP8 path really ran
    assert abs(ppl_fp8 / ppl_full - 1) < 0.01  # seen: -0.07%


def test_prefill_over_cached_fp8_context_matches_one_shot_prefill():
    """A prompt prefilled in chunks reads its earlier chunks back from the FP8 cache; one-shot
    attends to the same values rounded through FP8 (kv_quant.round_trip), so tokens agree."""
    prompts = [[{"role": "user", "content": TEXT}]]
    with LLM("demo", kv_cache_dtype="fp8", **DEMO) as one:
        ref = one.chat(prompts, GREEDY)[0].token_ids
    with LLM("demo", kv_cache_dtype="fp8", max_num_batched_tokens=32, **DEMO) as chunked:
        got = chunked.chat(prompts, GREEDY)[0].token_ids
        again = chunked.chat(prompts, GREEDY)[0]  # the whole prompt from the prefix cache
    assert got == ref
    assert again.token_ids == ref


def test_quantize_clamps_and_round_trips():
    x = torch.tensor([1000.0, -1000.0, 3.0, 0.1])
    q = kv_quant.quantize(x, 2.0)
    assert q.dtype == torch.float8_e4m3fn
    back = kv_quant.dequantize(q, 2.0, torch.float32)
    assert back[:2].tolist() == [896.0, -896.0]  # 448 * scale: clamped, not NaN
    assert back[2].item() == 3.0
    assert abs(back[3].item() - 0.1) < 0.1 / 8


def test_fp8_and_full_kv_refuse_each_other_naming_both_dtypes():
    from engine.model.named_shapes import named_model

    mc = named_model("tiny-llama")
    cfg = EngineConfig(model="random:tiny-llama")
    fp8 = kv_compat(cfg, mc, "m", torch.bfloat16, torch.float8_e4m3fn, (1.0, 1.0, 1.0, 1.0))
    full = kv_compat(cfg, mc, "m", torch.bfloat16)
    with pytest.raises(IncompatibleKVError, match="float8_e4m3fn.*bfloat16|bfloat16.*float8"):
        full.check_compatible(fp8, fp8.digest)
    other_scales = kv_compat(cfg, mc, "m", torch.bfloat16, torch.float8_e4m3fn,
                             (0.5, 1.0, 1.0, 1.0))
    with pytest.raises(IncompatibleKVError, match="kv_scales"):
        other_scales.check_compatible(fp8, fp8.digest)
    fp8.check_compatible(fp8, fp8.digest)


def test_handle_carries_kv_dtype_and_scales_over_the_wire():
    from engine.model.named_shapes import named_model
    from kv_transfer.handle import KVHandle, SourceRank

    mc = named_model("tiny-llama")
    compat = kv_compat(EngineConfig(), mc, "m", torch.float32, torch.float8_e4m3fn,
                       (0.25, 1.5, 1.0, 2.0))
    handle = KVHandle("r", "e", (1, 2), 20, 1, (SourceRank(0, "a", b"", 0, 8),), compat,
                      compat.digest, 0.0)
    back = handle_from_bytes(handle_to_bytes(handle))
    assert back.compat == compat and back.compat.kv_scales == (0.25, 1.5, 1.0, 2.0)
    back.check_receivable(compat)
