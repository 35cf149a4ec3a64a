"""Tensor-parallel decode: batch-1 step time at TP=1 and TP=2 (NCCL), same weights, same
prompt, with the overlapped engine loop and with the synchronous one, and whether the greedy
tokens of all runs agree.

    python -m benchmarks.tp_bench [--model random:llama-3.1-8b] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.report import machine_info, print_table, save_json
from engine import EngineConfig, LLMEngine, SamplingParams


def measure(model: str, tp: int, context: int, gen: int, kv_gib: float, graphs: bool,
            overlap: bool) -> dict:
    engine = LLMEngine(EngineConfig(model=model, device="cuda", dtype="bfloat16",
                                    tensor_parallel_size=tp, cuda_graphs=graphs,
                                    async_scheduling=overlap,
                                    kv_cache_memory_bytes=int(kv_gib * 2**30)))
    try:
        prompt = torch.randint(100, engine.model_config.vocab_size, (context,),
                               generator=torch.Generator().manual_seed(0)).tolist()
        engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=gen,
                                                  ignore_eos=True))
        tokens = []
        for _ in range(1 + 4):  # the prefill step and a few warm-up steps
            tokens += [t for d in engine.step() for t in d.new_token_ids]
        # Steady state, timed as a whole: a sync per step would stop the host from running
        # ahead of the GPU, which is what the overlapped loop is for.
        torch.cuda.synchronize()
        passes = engine.runner.num_forward_passes
        started = time.perf_counter()
        while engine.has_unfinished():
            tokens += [t for d in engine.step() for t in d.new_token_ids]
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        steps = engine.runner.num_forward_passes - passes
        return {"tp": tp, "graphs": graphs and engine.runner.graphs is not None,
                "overlapped": overlap, "step_ms": 1e3 * elapsed / steps, "tokens": tokens}
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="random:llama-3.1-8b")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--gen", type=int, default=64)
    parser.add_argument("--kv-gib", type=float, default=8.0)
    parser.add_argument("--no-graphs", action="store_true", help="eager decode on every rank")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tp_decode.json"))
    args = parser.parse_args()
    import faulthandler

    faulthandler.dump_traceback_later(150, exit=True)  # a hung collective shows its stack
    runs = [measure(args.model, tp, args.context, args.gen, args.kv_gib, not args.no_graphs,
                    overlap) for overlap in (True, False) for tp in (1, 2)]
    base = {r["overlapped"]: r for r in runs if r["tp"] == 1}
    same = all(r["tokens"] == runs[0]["tokens"] for r in runs)
    loops_agree = {tp: len({tuple(r["tokens"]) for r in runs if r["tp"] == tp}) == 1
                   for tp in (1, 2)}
    pairs = zip(runs[0]["tokens"], runs[1]["tokens"], strict=True)  # same prompt, same length
    common = next((i for i, (a, b) in enumerate(pairs) if a != b), len(runs[0]["tokens"]))
    ratio = runs[1]["step_ms"] / runs[0]["step_ms"]
    table = print_table(["TP", "CUDA graphs", "overlapped loop", "batch-1 step ms", "vs TP=1"],
                        [[r["tp"], r["graphs"], r["overlapped"], r["step_ms"],
                          r["step_ms"] / base[r["overlapped"]]["step_ms"]] for r in runs])
    print(f"greedy tokens identical across all runs: {same}; overlapped = synchronous loop "
          f"at TP=1: {loops_agree[1]}, at TP=2: {loops_agree[2]}; TP=1 and TP=2 agree for the "
          f"first {common} tokens")
    save_json(args.out, {"model": args.model, "context": args.context, "runs": runs,
                         "tp2_over_tp1": ratio, "tokens_identical": same,
                         "loops_agree_per_tp": loops_agree, "tp_agree_prefix": common, "table": table,
                         "machine": machine_info()})


if __name__ == "__main__":
    main()
