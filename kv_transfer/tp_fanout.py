"""KV transfer for a tensor-parallel receiver: rank 0's connector fans pulls out to every rank.

Each rank pulls its own head slice into its own KV memory with its own transfer agent; rank 0
sends the followers ``pull`` and ``poll`` control messages on the step broadcast channel and
gathers their results. A pull is complete only when every rank has finished its slice; it fails
if any rank's slice failed.

The messages are plain picklable objects (the handle travels as the frozen ``KVHandle``
itself); the channel that carries them belongs to the engine's TP group
(``engine/runner/tp_control.py``), and the followers' side is ``engine/runner/tp_follower.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kv_transfer.connector import KVConnector, PullResult
from kv_transfer.handle import KVHandle, SourceRank


@dataclass(frozen=True)
class ControlMessage:
    """Sent by rank 0 to follower ranks between (or instead of) model steps."""

    kind: str  # "pull" | "poll"
    pull_id: str = ""
    handle: KVHandle | None = None  # for "pull"
    src_block_ids: tuple[int, ...] = ()
    dst_block_ids: tuple[int, ...] = ()


class ControlChannel(Protocol):
    """Rank 0 to every rank of its TP group, and back: all ranks call each in the same order."""

    def broadcast(self, message: object) -> None:
        """Rank 0: send ``message`` to every follower."""

    def all_gather(self, mine: object) -> list:
        """Every rank: each rank's ``mine``, in rank order."""


class TensorParallelConnector(KVConnector):
    def __init__(self, local: KVConnector, world: int, control: ControlChannel):
        self.local = local
        self.world = world
        self._control = control
        self._partial: dict[str, list[PullResult]] = {}

    @property
    def source(self) -> SourceRank:
        return self.local.source

    def set_group_sources(self, sources: list[SourceRank]) -> None:
        self.local.set_group_sources(sources)

    def describe(self, request_id: str, block_ids: list[int], num_tokens: int,
                 lease_s: float) -> KVHandle:
        return self.local.describe(request_id, block_ids, num_tokens, lease_s)

    def revoke(self, request_id: str) -> bool:
        return self.local.revoke(request_id)

    def collect_ended_leases(self) -> list[tuple[str, str]]:
        return self.local.collect_ended_leases()

    def start_pull(self, pull_id: str, handle: KVHandle, src_block_ids: list[int],
                   dst_block_ids: list[int]) -> None:
        handle.check_receivable(self.local.compat)  # refuse before any rank starts
        self._control.broadcast(ControlMessage("pull", pull_id, handle, tuple(src_block_ids),
                                               tuple(dst_block_ids)))
        self._partial[pull_id] = []
        self.local.start_pull(pull_id, handle, src_block_ids, dst_block_ids)

    def poll_pulls(self) -> list[PullResult]:
        if not self._partial:
            return []
        self._control.broadcast(ControlMessage("poll"))
        finished = []
        for rank_results in self._control.all_gather(self.local.poll_pulls()):
            for result in rank_results:
                parts = self._partial.get(result.pull_id)
                if parts is None:
                    continue
                parts.append(result)
                if len(parts) == self.world:
                    del self._partial[result.pull_id]
                    failed = [p for p in parts if not p.ok]
                    finished.append(PullResult(
                        result.pull_id, not failed, failed[0].error if failed else None,
                        sum(p.num_bytes for p in parts), max(p.seconds for p in parts)))
        return finished

    def release(self, handle: KVHandle) -> None:
        self.local.release(handle)

    def close(self) -> None:
        self.local.close()
