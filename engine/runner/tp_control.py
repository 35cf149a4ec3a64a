"""The host-side control channel of a tensor-parallel group: rank 0 to its followers and back.

Rank 0 broadcasts each step (``StepInput``), KV transfer control (``ControlMessage``) and the
final ``None`` over it; the fan-out connector gathers the followers' pull results over it.
Tensors (the sampled tokens of an overlapped step, the activations inside the model) go over
the default group instead (NCCL on GPUs).

Pipeline parallelism adds its groups here: one control channel per TP group of a stage, and
the stage-to-stage groups beside it, all created in the same order on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class TPControl:
    """Object collectives over the group's gloo group (the default group on CPU).

    Steps and transfer control go to the followers over gloo even on GPUs: an object
    collective on NCCL stages the pickle through device memory and makes every follower wait
    for its GPU before it may read the next step. (The batch-1 TP=2 step stays host-bound
    either way: benchmarks/results/README.md.)
    """

    def __init__(self, world: int, device: torch.device):
        self.world = world
        # A collective: every rank creates it at the same point of its start.
        self.group = dist.new_group(backend="gloo") if device.type == "cuda" else None

    def broadcast(self, message: object) -> None:
        """Rank 0: send ``message`` to every follower."""
        dist.broadcast_object_list([message], src=0, group=self.group)

    def receive(self) -> object:
        """A follower: the next object rank 0 broadcast."""
        box: list[object] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def all_gather(self, mine: object) -> list:
        """Every rank: each rank's ``mine``, in rank order."""
        gathered: list[object] = [None] * self.world
        dist.all_gather_object(gathered, mine, group=self.group)
        return gathered
