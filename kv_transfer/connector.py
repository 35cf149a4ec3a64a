"""The KV connector interface: one instance per engine rank.

Split the way vLLM's connector is: the owner side only keeps books (describe a request's blocks
as a handle, track its lease), the receiver side moves data (pull a handle's blocks into local
blocks, asynchronously, and tell the owner when done). Engines call these from their step loop;
nothing here blocks on the network.

Implementations: ``NixlConnector`` (the real data plane), ``TensorParallelConnector`` (rank 0
of a TP receiver fanning pulls out to its ranks) and ``InProcessConnector`` (a reference for
engines in one process, used by the P/D state-machine tests; it says what it skips).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from kv_transfer.handle import KVHandle, SourceRank


@dataclass(frozen=True)
class PullResult:
    """How a pull ended. ``ok`` only when every descriptor of every slice completed."""

    pull_id: str  # the receiver's name for the pull (its own request id)
    ok: bool
    error: str | None = None
    num_bytes: int = 0
    seconds: float = 0.0


class KVConnector(ABC):
    @property
    @abstractmethod
    def source(self) -> SourceRank:
        """This rank's agent and registered KV region, as owners advertise it in handles."""

    # -- owner side (bookkeeping) -------------------------------------------------------------
    @abstractmethod
    def set_group_sources(self, sources: list[SourceRank]) -> None:
        """On the owner's rank 0: every rank's source, in rank order, for the handles."""

    @abstractmethod
    def describe(self, request_id: str, block_ids: list[int], num_tokens: int,
                 lease_s: float) -> KVHandle:
        """Start a lease on ``block_ids`` and return the handle a receiver needs."""

    @abstractmethod
    def revoke(self, request_id: str) -> bool:
        """End a lease early on the owner side (the request was aborted)."""

    @abstractmethod
    def collect_ended_leases(self) -> list[tuple[str, str]]:
        """(request_id, 'released' | 'expired') for leases that ended since the last call;
        the owner frees those blocks."""

    # -- receiver side (data movement) --------------------------------------------------------
    @abstractmethod
    def start_pull(self, pull_id: str, handle: KVHandle, src_block_ids: list[int],
                   dst_block_ids: list[int]) -> None:
        """Begin reading the owner's ``src_block_ids`` into local ``dst_block_ids`` (this
        rank's head slice). Raises IncompatibleKVError for a handle it cannot consume; other
        failures are reported by ``poll_pulls``."""

    @abstractmethod
    def poll_pulls(self) -> list[PullResult]:
        """Pulls that completed, failed or timed out since the last call."""

    @abstractmethod
    def release(self, handle: KVHandle) -> None:
        """Tell the owner its blocks are no longer needed (after a pull, or instead of one)."""

    @abstractmethod
    def close(self) -> None:
        """Cancel pulls in flight and drop registrations."""
