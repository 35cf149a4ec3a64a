"""A real process holding one engine rank's KV buffer and a real NIXL connector, driven by
the test through queues. The buffer content is a deterministic global tensor's head slice,
so any receiver can compute the bytes it must end up with."""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback

import torch

from kv_transfer.handle import KVCompat
from kv_transfer.layout import RegionLayout
from tests.queue_process import QueueProcess

LAYERS, BLOCKS, HEADS, BLOCK_SIZE, HEAD_DIM = 3, 12, 4, 4, 8


def compat(**overrides) -> KVCompat:
    fields = dict(model="random:test", dtype="float32", kv_dtype="float32", num_layers=LAYERS,
                  num_kv_heads=HEADS, head_dim=HEAD_DIM, block_size=BLOCK_SIZE, hash_seed="t")
    fields.update(overrides)
    return KVCompat(**fields)


def global_kv(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BLOCKS, HEADS, LAYERS, 2, BLOCK_SIZE, HEAD_DIM, generator=g)


def head_slice(kv: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    per = HEADS // tp
    return kv[:, rank * per:(rank + 1) * per].contiguous()


def _serve(commands: mp.Queue, results: mp.Queue, rank: int, tp: int, seed: int | None,
           engine_id: str, compat_overrides: dict) -> None:
    from kv_transfer.nixl_connector import NixlConnector, NixlSettings

    buffer = head_slice(global_kv(seed), rank, tp) if seed is not None else \
        torch.zeros(BLOCKS, HEADS // tp, LAYERS, 2, BLOCK_SIZE, HEAD_DIM)
    layout = RegionLayout(LAYERS, BLOCKS, HEADS // tp, BLOCK_SIZE, HEAD_DIM, 4)
    conn = NixlConnector(engine_id, rank, tp, buffer, layout, compat(**compat_overrides),
                         NixlSettings(pull_timeout_s=10.0, lease_grace_s=0.2))
    results.put(("source", conn.source))
    while True:
        cmd, args = commands.get()
        try:
            if cmd == "stop":
                conn.close()
                results.put(("stopped", None))
                return
            if cmd == "set_group":
                conn.set_group_sources(args)
                results.put(("ok", None))
            elif cmd == "describe":
                results.put(("handle", conn.describe(*args)))
            elif cmd == "collect":
                ended = []
                deadline = time.time() + args
                while time.time() < deadline and not ended:
                    ended = conn.collect_ended_leases()
                    time.sleep(0.01)
                results.put(("ended", ended))
            elif cmd == "pull":
                handle, src, dst = args
                conn.start_pull("pull", handle, src, dst)
                started = time.time()
                done = []
                while not done:
                    done = conn.poll_pulls()
                    time.sleep(0.001)
                results.put(("pulled", (done[0], time.time() - started, buffer.clone())))
            elif cmd == "release":
                conn.release(args)
                results.put(("ok", None))
        except Exception as e:
            results.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class Peer(QueueProcess):
    """One rank in its own process."""

    def __init__(self, rank: int, tp: int, seed: int | None, engine_id: str, **compat_overrides):
        super().__init__(_serve, (rank, tp, seed, engine_id, compat_overrides), "source",
                         timeout=60)
        self.source = self.ready_value


def owner_group(tp: int, seed: int, engine_id: str) -> list[Peer]:
    peers = [Peer(r, tp, seed, engine_id) for r in range(tp)]
    peers[0].call("set_group", [p.source for p in peers])
    return peers
