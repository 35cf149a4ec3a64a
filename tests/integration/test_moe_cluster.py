"""A MoE checkpoint through the disaggregated pipeline: prefill worker -> NIXL -> decode worker
(real gRPC processes, real Redis) gives one engine's greedy tokens, with the decode worker on
one rank (overlapped loop) and on two ranks splitting the experts (--tp 2 --ep 2) fed by a
one-rank prefill worker: the KV layout does not depend on EP. The same model as a GGUF file
(llama.cpp's layout, tests/gguf_reference.py) through both workers, the decode worker on two
ranks, gives the HF directory's tokens too."""

import asyncio

import pytest

from engine import LLM, SamplingParams
from tests.cluster_helpers import WorkerProcess
from tests.gguf_reference import write_gguf
from tests.helpers import random_prompts
from tests.integration.test_workers import disaggregated, stats
from tests.moe_reference import write_tiny_moe

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_qwen3_moe")
    write_tiny_moe("qwen3_moe", path, seed=11)
    return path


@pytest.fixture(scope="module")
def moe_gguf(moe_dir, tmp_path_factory):
    pytest.importorskip("gguf")
    with LLM(model=str(moe_dir), device="cpu", kv_cache_memory_bytes=16 << 20) as llm:
        state = dict(llm.engine.runner.model.hf_state_dict())
        return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-qwen3-moe.gguf", state,
                              llm.engine.model_config)


def _expected(moe_dir, prompts):
    with LLM(model=str(moe_dir), device="cpu", kv_cache_memory_bytes=int(0.02 * 2**30)) as one:
        return [o.token_ids for o in one.generate(
            prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))]


def _through_cluster(redis_url, args, decode_extra, prompts):
    prefill = WorkerProcess("prefill", args, redis_url)
    decode = WorkerProcess("decode", args + decode_extra, redis_url)
    try:
        async def main():
            return await asyncio.gather(*(disaggregated(prefill.address, decode.address,
                                                        f"moe{i}", p)
                                          for i, p in enumerate(prompts)))

        got = [tokens for tokens, _ in asyncio.run(main())]
        d = asyncio.run(stats(decode.address))
        assert d.pulls_ok == len(prompts) and d.num_blocks_in_use == 0
        return got
    finally:  # both stopped before either exit code is judged: nothing left running
        codes = decode.stop(timeout=120), prefill.stop()  # TP ranks exit slowly under load
        assert codes == (0, 0), "".join(decode.log_lines[-20:] + prefill.log_lines[-20:])


@pytest.mark.parametrize("decode_extra", [["--async-scheduling", "on"], ["--tp", "2", "--ep", "2"]],
                         ids=["decode-1-rank-overlapped", "decode-tp2-ep2"])
def test_moe_greedy_through_cluster_equals_one_engine(redis_server, moe_dir, decode_extra):
    args = ["--model", str(moe_dir), "--device", "cpu", "--kv-cache-gib", "0.02"]
    prompts = random_prompts(8, 256, 4, 60, seed=600)
    expected = _expected(moe_dir, prompts)
    assert _through_cluster(redis_server.url, args, decode_extra, prompts) == expected


def test_moe_gguf_through_cluster_with_ep_equals_the_hf_directory(redis_server, moe_dir,
                                                                  moe_gguf):
    args = ["--model", str(moe_gguf), "--device", "cpu", "--kv-cache-gib", "0.02"]
    prompts = random_prompts(4, 256, 4, 60, seed=601)
    expected = _expected(moe_dir, prompts)
    assert _through_cluster(redis_server.url, args, ["--tp", "2", "--ep", "2"],
                            prompts) == expected
