"""Where a decode step's (or a prefill's) time goes on the GPU: host vs device, top kernels.

    python -m benchmarks.decode_profile --batch 1 64 [--model random:llama-3.1-8b]
    python -m benchmarks.decode_profile --prefill 4096 [--chunk 2048]
    python -m benchmarks.decode_profile --model random:llama-3.1-8b-fp8 --kv-cache-dtype fp8
"""

from __future__ import annotations

import argparse
import time

import torch

from engine import EngineConfig, LLMEngine, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--kv-gib", type=float, default=20.0)
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto or fp8")
    parser.add_argument("--rows", type=int, default=14, help="kernels listed per table")
    parser.add_argument("--prefill", type=int, default=None,
                        help="profile one prefill of this many tokens instead")
    parser.add_argument("--chunk", type=int, default=8192,
                        help="max_num_batched_tokens: a longer prefill runs in chunks of this")
    args = parser.parse_args()
    engine = LLMEngine(EngineConfig(model=args.model, device="cuda", dtype="bfloat16",
                                    kv_cache_memory_bytes=int(args.kv_gib * 2**30),
                                    kv_cache_dtype=args.kv_cache_dtype,
                                    max_num_batched_tokens=args.chunk))
    vocab = engine.model_config.vocab_size
    if args.prefill:
        profile_prefill(engine, args.prefill)
        engine.shutdown()
        return
    for batch in args.batch:
        g = torch.Generator().manual_seed(batch)
        prompts = torch.randint(100, vocab, (batch, args.context), generator=g).tolist()
        params = SamplingParams(temperature=0, max_tokens=args.steps * 4 + 4, ignore_eos=True)
        engine.pool.reset_prefix_cache()
        for p in prompts:
            engine.add_request(p, params)
        while engine.scheduler.waiting or any(
                s.num_computed_tokens < s.num_prompt_tokens for s in engine.scheduler.running):
            engine.step()
        for _ in range(args.steps):  # warm
            engine.step()
        torch.cuda.synchronize()
        # Host time of a step vs. device time of the same step.
        host, total = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            engine.step()
            end.record()
            torch.cuda.synchronize()
            total.append(time.perf_counter() - t0)
            host.append(start.elapsed_time(end) / 1e3)
        print(f"batch {batch}: wall {1e3 * sorted(total)[len(total) // 2]:.2f} ms/step, "
              f"events {1e3 * sorted(host)[len(host) // 2]:.2f} ms/step, "
              f"graph replay alone {graph_replay_ms(engine, batch):.2f} ms")
        host_profile(engine, args.steps)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                engine.step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows,
                                        max_name_column_width=60))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=10,
                                        max_name_column_width=60))
        for rid in list(engine.seqs):
            engine.abort_request(rid)
    engine.shutdown()


def graph_replay_ms(engine: LLMEngine, batch: int, reps: int = 20) -> float:
    """GPU time of the captured decode graph alone, replayed back to back: the step's floor
    once host work is hidden."""
    graphs = engine.runner.graphs
    if graphs is None or batch not in graphs.graphs:
        return float("nan")
    graphs.graphs[batch].replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        graphs.graphs[batch].replay()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / reps


def host_profile(engine: LLMEngine, steps: int) -> None:
    """Which Python functions a step's host time goes to (cProfile, own time)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        engine.step()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def profile_prefill(engine: LLMEngine, length: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    prompt = torch.randint(100, engine.model_config.vocab_size, (length,),
                           generator=torch.Generator().manual_seed(0)).tolist()

    def once():
        engine.pool.reset_prefix_cache()
        engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=1))
        while engine.has_unfinished():
            engine.step()
        torch.cuda.synchronize()

    once()
    started = time.perf_counter()
    once()
    print(f"prefill {length}: {1e3 * (time.perf_counter() - started):.1f} ms")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        once()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18,
                                    max_name_column_width=60))


if __name__ == "__main__":
    main()
