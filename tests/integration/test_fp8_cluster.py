"""FP8 end to end through worker processes (issue 19): FP8 weights quantized at load and an FP8
KV cache, as `pdserve up --quantization fp8 --kv-cache-dtype fp8` starts them, on a prefill
worker (one rank) and a decode worker (two ranks: heterogeneous TP), real gRPC, real NIXL.
Greedy tokens equal one FP8 engine's exactly (fp32 compute on CPU), every prompt's KV is
pulled, and the blocks moved are FP8: a quarter of the bytes the same cluster moves with an
fp32 KV cache (e4m3 is one byte an element, fp32 four)."""

import asyncio

import pytest

from engine import LLM, SamplingParams
from tests.cluster_helpers import WorkerProcess
from tests.helpers import random_prompts
from tests.integration.test_workers import disaggregated, stats

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")

MODEL = ["--model", "random:tiny-llama-tp", "--device", "cpu", "--dtype", "float32",
         "--seed", "5", "--kv-cache-gib", "0.02"]
FP8 = ["--quantization", "fp8", "--kv-cache-dtype", "fp8"]


def _one_engine(prompts, **fp8):
    with LLM(model="random:tiny-llama-tp", device="cpu", dtype="float32", seed=5,
             kv_cache_memory_bytes=int(0.02 * 2**30), **fp8) as one:
        return [o.token_ids for o in one.generate(
            prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))]


def _through_workers(redis_url, worker_args, prompts):
    prefill = WorkerProcess("prefill", MODEL + worker_args, redis_url)
    decode = WorkerProcess("decode", MODEL + worker_args + ["--tp", "2"], redis_url)
    try:
        async def main():
            return await asyncio.gather(*(disaggregated(prefill.address, decode.address,
                                                        f"fp8-{i}", p)
                                          for i, p in enumerate(prompts)))

        got = [tokens for tokens, _ in asyncio.run(main())]
        d = asyncio.run(stats(decode.address))
        assert d.pulls_ok == len(prompts) and d.pulls_failed == 0 and d.num_blocks_in_use == 0
        return got, d.bytes_pulled
    finally:  # both stopped before either exit code is judged: nothing left running
        codes = decode.stop(timeout=120), prefill.stop()  # TP ranks exit slowly under load
        assert codes == (0, 0), "".join(decode.log_lines[-20:] + prefill.log_lines[-20:])


def test_fp8_weights_and_kv_through_workers_equal_one_fp8_engine(redis_server):
    prompts = random_prompts(4, 256, 40, 80, seed=19)
    expected = _one_engine(prompts, quantization="fp8", kv_cache_dtype="fp8")
    got, fp8_bytes = _through_workers(redis_server.url, FP8, prompts)
    assert got == expected
    _, fp32_bytes = _through_workers(redis_server.url, ["--quantization", "fp8"], prompts)
    # The same blocks, one byte an element instead of four: the workers really ran FP8 KV (on
    # this tiny random model FP8 does not change the greedy tokens, so they cannot tell).
    assert fp8_bytes * 4 == fp32_bytes
