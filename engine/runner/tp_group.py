"""Start a tensor-parallel group: rank 0 in this process, ranks 1..N-1 as spawned followers.

Rank 0 runs the scheduler and broadcasts each step; followers only execute (tp_follower.py).
The default group is gloo on CPU, NCCL on CUDA; steps and KV transfer control travel on the
group's control channel (tp_control.py, where pipeline parallelism adds its stage groups).
Followers are daemonic, so they cannot outlive a crashed rank 0.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket

import torch
import torch.distributed as dist

from engine.config import EngineConfig
from engine.model.config import ModelConfig
from engine.model.loaders.source import ModelSource
from engine.runner.model_runner import ModelRunner
from engine.runner.tp_follower import TPFollower


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(config: EngineConfig) -> str:
    return "nccl" if config.resolved_device().type == "cuda" else "gloo"


def _set_cpu_threads(config: EngineConfig, world: int) -> None:
    if config.resolved_device().type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))


def _follower_main(config, source, model_config, rank, world, init_method, max_model_len):
    _set_cpu_threads(config, world)
    dist.init_process_group(_backend(config), init_method=init_method, rank=rank,
                            world_size=world)
    runner = None
    try:
        runner = ModelRunner(config, source, model_config, rank, world, max_model_len)
        TPFollower(runner).run()
    finally:
        if runner is not None:
            runner.release_graphs()  # captured NCCL calls must go before the communicator
        dist.destroy_process_group()


class TensorParallelGroup:
    """Owns the follower processes; ``runner`` is rank 0's model runner."""

    def __init__(self, config: EngineConfig, source: ModelSource, model_config: ModelConfig,
                 max_model_len: int):
        world = config.tensor_parallel_size
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        ctx = mp.get_context("spawn")
        self.processes = [
            ctx.Process(
                target=_follower_main,
                args=(config, source, model_config, rank, world, init_method, max_model_len),
                daemon=True,
                name=f"pdserve-tp-rank{rank}",
            )
            for rank in range(1, world)
        ]
        for p in self.processes:
            p.start()
        _set_cpu_threads(config, world)
        dist.init_process_group(_backend(config), init_method=init_method, rank=0,
                                world_size=world)
        self.runner = ModelRunner(config, source, model_config, 0, world, max_model_len)

    def shutdown(self) -> None:
        try:
            self.runner.stop_followers()
            self.runner.release_graphs()
        finally:
            for p in self.processes:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
            if dist.is_initialized():
                dist.destroy_process_group()
