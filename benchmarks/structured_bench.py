"""Constrained decoding's cost per decode step: json_schema against free, batch 1 and 32, in one
run on one machine (the ratio is the point; the absolute step time is the model's).

Each row of a batch decodes 64 tokens. Free rows ignore EOS; constrained rows follow a schema
that forces an array of exactly 32 one-letter strings (about 2 tokens an item), so both batches
run the same number of steps whatever the weights are. The step time is the decode phase's
wall time over its steps (prefill excluded), the engine's own loop: on CUDA the overlapped
decode with graphs, the mask filled on the host and applied on the device.

    python -m benchmarks.structured_bench [--model DIR] [--out benchmarks/results/structured_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmarks.report import machine_info, print_table, save_json
from common.sampling_params import SamplingParams
from common.structured_output import StructuredOutput
from engine import EngineConfig, LLMEngine

GEN_TOKENS = 64
SCHEMA = {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 32, "maxItems": 32}


def decode_step_ms(engine: LLMEngine, batch: int, constrained: bool, prompt: list[int]) -> dict:
    structured = StructuredOutput("json_schema", json.dumps(SCHEMA)) if constrained else None
    params = SamplingParams(temperature=0, max_tokens=GEN_TOKENS, ignore_eos=not constrained,
                            structured=structured)
    ids = [engine.add_request(prompt, params) for _ in range(batch)]
    sync = (lambda: torch.cuda.synchronize()) if engine.runner.device.type == "cuda" else (
        lambda: None)
    tokens = dict.fromkeys(ids, 0)
    first_done = None
    steps = 0
    while engine.has_unfinished():
        for d in engine.step():
            tokens[d.request_id] += len(d.new_token_ids)
        if first_done is None and all(n > 0 for n in tokens.values()):
            sync()
            first_done, steps = time.perf_counter(), 0
        elif first_done is not None:
            steps += 1
    sync()
    decode_s = time.perf_counter() - first_done
    return {"step_ms": 1e3 * decode_s / max(steps, 1), "steps": steps,
            "tokens_per_row": statistics.median(tokens.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="model spec (needs a tokenizer)")
    parser.add_argument("--batches", default="1,32", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the median")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    engine = LLMEngine(EngineConfig(model=args.model, max_num_seqs=64))
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": "List letters."}])
    device = engine.runner.device.type
    rows, cells = [], []
    for batch in (int(b) for b in args.batches.split(",")):
        decode_step_ms(engine, batch, True, prompt)  # warm: graphs, the token trie, the grammar
        decode_step_ms(engine, batch, False, prompt)
        result = {}
        for constrained in (False, True):
            runs = [decode_step_ms(engine, batch, constrained, prompt)
                    for _ in range(args.repeats)]
            result["json_schema" if constrained else "free"] = {
                "step_ms": statistics.median(r["step_ms"] for r in runs),
                "runs_step_ms": [r["step_ms"] for r in runs],
                "tokens_per_row": runs[0]["tokens_per_row"], "steps": runs[0]["steps"]}
        ratio = result["json_schema"]["step_ms"] / result["free"]["step_ms"]
        cells.append({"batch": batch, **result, "ratio": ratio})
        rows.append([device, batch, result["free"]["step_ms"], result["json_schema"]["step_ms"],
                     ratio, result["json_schema"]["tokens_per_row"]])
    table = print_table(["device", "batch", "free ms/step", "json_schema ms/step",
                         "ratio", "constrained tokens/row"], rows)
    out = args.out or Path(f"benchmarks/results/structured_{device}.json")
    save_json(out, {"benchmark": "structured_bench", "machine": machine_info(),
                    "model": args.model, "device": device, "schema": SCHEMA,
                    "gen_tokens": GEN_TOKENS, "results": cells, "table": table})
    engine.shutdown()


if __name__ == "__main__":
    main()
