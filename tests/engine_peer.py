"""An LLMEngine with KV transfer in its own process, driven through queues (a prefill role
without the gRPC service around it)."""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback

from tests.queue_process import QueueProcess


def _serve(commands: mp.Queue, results: mp.Queue, engine_kwargs: dict) -> None:
    from engine import EngineConfig, LLMEngine, SamplingParams

    engine = LLMEngine(EngineConfig(kv_transfer="nixl", **engine_kwargs))
    results.put(("ready", engine.config.engine_id))
    while True:
        cmd, args = commands.get()
        try:
            if cmd == "stop":
                engine.shutdown()
                results.put(("stopped", None))
                return
            if cmd == "prefill":
                prompts = args
                ids = [engine.add_request(p, SamplingParams(temperature=0, max_tokens=1),
                                          hold_kv=True) for p in prompts]
                out = {}
                while len(out) < len(ids):
                    for d in engine.step():
                        if d.finished:
                            out[d.request_id] = (d.new_token_ids[0], d.kv_handle,
                                                 d.num_cached_tokens)
                results.put(("prefilled", [out[i] for i in ids]))
            elif cmd == "wait_free":  # step until no block is held, up to a timeout
                deadline = time.time() + args
                while engine.num_held_kv and time.time() < deadline:
                    engine.step()
                    time.sleep(0.01)
                pool = engine.pool
                results.put(("state", (engine.num_held_kv, pool.num_free_blocks, pool.num_blocks,
                                       engine.stats().transfer)))
        except Exception as e:
            results.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class EnginePeer(QueueProcess):
    def __init__(self, **engine_kwargs):
        super().__init__(_serve, (engine_kwargs,), "ready", timeout=120)
        self.engine_id = self.ready_value
