"""A reference KV connector for engines in one process: blocks move by a tensor copy.

It exists so the P/D state machine (hold, lease, pull, release, abort, failure, expiry) can be
tested with two real engines in one process, without NIXL and without child processes. The
bookkeeping is the real one (``LeaseTable``, handles, release notices); only the data path
differs. What it skips, compared with ``NixlConnector``:

- no transfer agents and no metadata exchange: peers find each other by agent name in a shared
  ``InProcessFabric``; ``SourceRank.agent_metadata`` is empty and the base address is 0;
- one rank per engine (TP 1 on both sides): a tensor-parallel engine's followers live in other
  processes, which no in-process fabric reaches;
- no partial or transport failures, no pull timeouts: a pull fails only when the lease has
  ended (below) or when a test injects a failure with ``fail_pull``;
- the bytes are copied when the pull completes (at a ``poll_pulls``, after ``delay_polls``
  polls that report nothing), all at once, not while the transfer is "in flight".

Stricter than NIXL in one way, on purpose: a read of a handle whose lease the owner no longer
holds (released, revoked, expired) fails instead of returning whatever the blocks hold now, so
a test sees a receiver that would have used reused blocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kv_transfer.connector import KVConnector, PullResult
from kv_transfer.handle import IncompatibleKVError, KVCompat, KVHandle, SourceRank
from kv_transfer.leases import LeaseTable

log = logging.getLogger(__name__)


class InProcessFabric:
    """The connectors of one process, by agent name: what NIXL's agents and notifications
    are to ``NixlConnector``."""

    def __init__(self) -> None:
        self._connectors: dict[str, InProcessConnector] = {}

    def join(self, connector: InProcessConnector) -> None:
        if connector.agent_name in self._connectors:
            raise ValueError(f"agent {connector.agent_name!r} has joined already")
        self._connectors[connector.agent_name] = connector

    def leave(self, agent_name: str) -> None:
        self._connectors.pop(agent_name, None)

    def find(self, agent_name: str) -> InProcessConnector | None:
        return self._connectors.get(agent_name)


@dataclass
class _Pull:
    handle: KVHandle
    src_block_ids: list[int]
    dst_block_ids: list[int]
    polls_left: int  # polls that report nothing before the pull completes
    started_s: float
    error: str | None = None


class InProcessConnector(KVConnector):
    def __init__(self, fabric: InProcessFabric, engine_id: str, kv_buffer: torch.Tensor,
                 compat: KVCompat, clock: Callable[[], float] = time.time,
                 lease_grace_s: float = 1.0, lease_margin_s: float = 0.5,
                 delay_polls: int = 0):
        """``kv_buffer``: the engine's KV buffer, block-major (``[blocks, ...]``), so a block
        is one row. ``clock``: unix seconds, for lease deadlines (a test passes a fake one).
        ``delay_polls``: how many polls a pull stays in flight before it completes."""
        self.fabric = fabric
        self.engine_id = engine_id
        self.agent_name = f"{engine_id}-r0"
        self.kv_buffer = kv_buffer
        self.compat = compat
        self.clock = clock
        self.lease_margin_s = lease_margin_s
        self.delay_polls = delay_polls
        self.leases = LeaseTable(grace_s=lease_grace_s, clock=clock)
        self._source = SourceRank(0, self.agent_name, b"", 0, kv_buffer.shape[0],
                                  kv_buffer.device.index or 0)
        self._release_notices: list[str] = []  # request ids receivers released
        self._pulls: dict[str, _Pull] = {}
        self._fail_at_start: dict[str, str] = {}
        self._fail_at_poll: dict[str, str] = {}
        fabric.join(self)

    @property
    def source(self) -> SourceRank:
        return self._source

    # -- fault injection (tests) --------------------------------------------------------------
    def fail_pull(self, pull_id: str, error: str, at_start: bool = False) -> None:
        """Make the pull named ``pull_id`` fail with ``error``, copying nothing: raised by
        ``start_pull`` (a pull that could not be posted) or, by default, reported by the poll
        that would have completed it (a read that broke)."""
        (self._fail_at_start if at_start else self._fail_at_poll)[pull_id] = error

    # -- owner side ---------------------------------------------------------------------------
    def set_group_sources(self, sources: list[SourceRank]) -> None:
        if len(sources) != 1:
            raise ValueError("the in-process connector serves TP 1 engines only")

    def describe(self, request_id: str, block_ids: list[int], num_tokens: int,
                 lease_s: float) -> KVHandle:
        lease = self.leases.grant(request_id, tuple(block_ids), lease_s)
        return KVHandle(
            request_id=request_id,
            engine_id=self.engine_id,
            block_ids=tuple(block_ids),
            num_tokens=num_tokens,
            tp_size=1,
            sources=(self._source,),
            compat=self.compat,
            compat_digest=self.compat.digest,
            lease_deadline=lease.deadline,
            memory_kind="VRAM" if self.kv_buffer.is_cuda else "DRAM",
        )

    def revoke(self, request_id: str) -> bool:
        return self.leases.release(request_id) is not None

    def collect_ended_leases(self) -> list[tuple[str, str]]:
        notices, self._release_notices = self._release_notices, []
        return self.leases.collect_ended(notices)

    # -- receiver side ------------------------------------------------------------------------
    def start_pull(self, pull_id: str, handle: KVHandle, src_block_ids: list[int],
                   dst_block_ids: list[int]) -> None:
        handle.check_receivable(self.compat)
        if handle.tp_size != 1:
            raise IncompatibleKVError("the in-process connector reads from TP 1 owners only")
        if len(src_block_ids) != len(dst_block_ids):
            raise ValueError("source and destination block lists differ in length")
        if pull_id in self._pulls:
            raise ValueError(f"a pull named {pull_id!r} is already in flight")
        error = self._fail_at_start.pop(pull_id, None)
        if error is not None:
            raise RuntimeError(error)
        pull = _Pull(handle, list(src_block_ids), list(dst_block_ids), self.delay_polls,
                     time.perf_counter())
        remaining_s = handle.lease_deadline - self.lease_margin_s - self.clock()
        if remaining_s <= 0:  # as NixlConnector: never start a read this close to reuse
            pull.error = (f"KV lease of {handle.request_id!r} expired "
                          f"{-remaining_s:.1f}s before the pull could start")
        self._pulls[pull_id] = pull

    def poll_pulls(self) -> list[PullResult]:
        results = []
        for pull_id, pull in list(self._pulls.items()):
            if pull.error is None and pull.polls_left > 0:
                pull.polls_left -= 1
                continue
            del self._pulls[pull_id]
            error = pull.error or self._fail_at_poll.pop(pull_id, None) or self._copy(pull)
            seconds = time.perf_counter() - pull.started_s
            if error is not None:
                results.append(PullResult(pull_id, False, error, 0, seconds))
                continue
            row_bytes = self.kv_buffer[0].numel() * self.kv_buffer.element_size()
            results.append(PullResult(pull_id, True, None, len(pull.dst_block_ids) * row_bytes,
                                      seconds))
        return results

    def release(self, handle: KVHandle) -> None:
        owner = self.fabric.find(handle.sources[0].agent_name)
        if owner is None:  # the owner is gone: its lease died with it
            log.warning("could not release %s: %s has left", handle.request_id,
                        handle.sources[0].agent_name)
            return
        owner._release_notices.append(handle.request_id)

    def close(self) -> None:
        self._pulls.clear()
        self.fabric.leave(self.agent_name)

    # -- internals ----------------------------------------------------------------------------
    def _copy(self, pull: _Pull) -> str | None:
        """Copy the blocks from the owner; the error, or None once they are here."""
        rid = pull.handle.request_id
        owner = self.fabric.find(pull.handle.sources[0].agent_name)
        if owner is None:
            return f"the KV owner {pull.handle.engine_id} is unreachable (it has left)"
        if rid not in owner.leases:
            return f"the KV owner no longer holds the lease of {rid!r}"
        if pull.src_block_ids:
            src = torch.tensor(pull.src_block_ids, device=owner.kv_buffer.device)
            dst = torch.tensor(pull.dst_block_ids, device=self.kv_buffer.device)
            self.kv_buffer[dst] = owner.kv_buffer[src].to(self.kv_buffer.device)
        return None
