"""KV connector over NIXL (UCX): DRAM on CPU, VRAM on GPU.

Each rank registers its whole KV buffer once. Descriptor lists are prepared once per
(peer rank, head slice) and cached, so a pull is one prepped READ per owner rank that lists many
blocks by index: one descriptor per block, whether both sides hold the same heads (equal TP) or
the receiver reads a head range (the layout keeps a block's heads contiguous; see layout.py).
NIXL merges descriptors that are adjacent on both sides, so a prompt's consecutive blocks move
as one run (measured: building run descriptors ourselves per pull was slower than letting the
prepped path merge them).

Agent metadata travels inside the handle and is loaded once per peer agent. On CPU, UCX is told
to use shared memory (``UCX_TLS=shm,self``), no error-handling mode and no progress thread
(which would spin a core), as measured in DESIGN.md §4; a worker that advertises a non-loopback
address uses TCP on that address's interface instead (``NixlSettings.for_device``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from common.net_address import interface_of, is_loopback
from kv_transfer.connector import KVConnector, PullResult
from kv_transfer.handle import KVCompat, KVHandle, SourceRank
from kv_transfer.layout import RegionLayout, plan_head_slices
from kv_transfer.leases import LeaseTable

log = logging.getLogger(__name__)

_RELEASE_PREFIX = b"pdserve-release:"


def import_nixl():
    """The NIXL Python API from whichever wheel is installed (cu13, cu12, or the meta package)."""
    for name in ("nixl_cu13", "nixl_cu12", "nixl._api"):
        try:
            module = __import__(name, fromlist=["nixl_agent"])
            return module.nixl_agent, module.nixl_agent_config
        except ImportError:
            continue
    raise ImportError(
        "NIXL is not installed: pip install 'pdserve[nixl]' (nixl-cu12) or nixl-cu13 on CUDA 13"
    )


@dataclass(frozen=True)
class NixlSettings:
    """Transport settings; the CPU defaults are the ones that work on these machines."""

    ucx_tls: str | None = "shm,self"  # None: let UCX choose (GPU hosts: cuda_ipc, rc, ...)
    ucx_net_devices: str | None = "lo"  # keep any TCP on loopback
    error_handling_mode: str | None = "none"
    progress_thread: bool = False
    pull_timeout_s: float = 30.0
    lease_margin_s: float = 0.5  # never start or continue a read this close to the deadline
    lease_grace_s: float = 1.0  # owner waits this long past a deadline before reuse

    @classmethod
    def for_device(cls, device: torch.device, advertise_host: str | None = None,
                   **overrides) -> NixlSettings:
        """Settings for a KV buffer on ``device`` whose agent peers reach at
        ``advertise_host`` (None or loopback: every peer is on this machine).

        Reachable from other hosts on CPU: UCX over TCP on the interface holding that address
        (shm cannot cross hosts, nor containers that share a kernel but not /dev/shm, where
        UCX would still think the peer local). On GPU UCX chooses (NVLink, RDMA, TCP)."""
        if device.type == "cuda":
            return cls(ucx_tls=None, ucx_net_devices=None, **overrides)
        if advertise_host is None or is_loopback(advertise_host):
            return cls(**overrides)
        # An address no local interface holds (NAT, a name for a load balancer): let UCX use
        # every interface rather than guess.
        return cls(ucx_tls="tcp,self", ucx_net_devices=interface_of(advertise_host),
                   **overrides)


@contextlib.contextmanager
def _ucx_environment(settings: NixlSettings):
    """UCX reads its configuration from the environment when the backend's context is made.
    Values the operator set explicitly win; ours are removed again afterwards, so they never
    reach processes this one starts (a worker on another "host" that inherited ``UCX_TLS=shm``
    from a loopback connector here would move its KV through shared memory, not its network)."""
    ours = {name: value for name, value in (("UCX_TLS", settings.ucx_tls),
                                            ("UCX_NET_DEVICES", settings.ucx_net_devices))
            if value and name not in os.environ}
    os.environ.update(ours)
    try:
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


@dataclass
class _Pull:
    handle: KVHandle
    xfers: list = field(default_factory=list)
    num_bytes: int = 0
    started: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0  # time.time() by which it must be done
    error: str | None = None


class NixlConnector(KVConnector):
    def __init__(
        self,
        engine_id: str,
        tp_rank: int,
        tp_size: int,
        kv_buffer: torch.Tensor,
        layout: RegionLayout,
        compat: KVCompat,
        settings: NixlSettings | None = None,
    ):
        self.settings = settings or NixlSettings.for_device(kv_buffer.device)
        nixl_agent, nixl_agent_config = import_nixl()
        self.engine_id = engine_id
        self.tp_rank, self.tp_size = tp_rank, tp_size
        self.layout = layout
        self.compat = compat
        assert kv_buffer.is_contiguous() and kv_buffer.numel() * kv_buffer.element_size() == \
            layout.total_bytes, "KV buffer does not match its layout"
        self.kv_buffer = kv_buffer
        self.memory_kind = "VRAM" if kv_buffer.is_cuda else "DRAM"
        self.device_id = kv_buffer.device.index or 0
        self.agent_name = f"{engine_id}-r{tp_rank}"
        self.agent = nixl_agent(
            self.agent_name,
            nixl_agent_config(enable_prog_thread=self.settings.progress_thread, backends=[]),
        )
        params = {}
        if self.settings.error_handling_mode:
            params["ucx_error_handling_mode"] = self.settings.error_handling_mode
        with _ucx_environment(self.settings):
            self.agent.create_backend("UCX", params)
        self._registration = self.agent.register_memory([kv_buffer])
        self._source = SourceRank(tp_rank, self.agent_name, self.agent.get_agent_metadata(),
                                  kv_buffer.data_ptr(), layout.num_blocks, self.device_id)
        self._group_sources: list[SourceRank] = [self._source]
        self._loaded_agents: set[str] = set()
        self._dlists: dict[tuple, object] = {}
        self._pulls: dict[str, _Pull] = {}
        self._done: list[PullResult] = []
        self.leases = LeaseTable(grace_s=self.settings.lease_grace_s)
        self.bytes_pulled = 0
        self.seconds_pulling = 0.0

    @property
    def source(self) -> SourceRank:
        return self._source

    # -- owner side ---------------------------------------------------------------------------
    def set_group_sources(self, sources: list[SourceRank]) -> None:
        assert [s.tp_rank for s in sources] == list(range(self.tp_size))
        self._group_sources = list(sources)

    def describe(self, request_id: str, block_ids: list[int], num_tokens: int,
                 lease_s: float) -> KVHandle:
        lease = self.leases.grant(request_id, tuple(block_ids), lease_s)
        return KVHandle(
            request_id=request_id,
            engine_id=self.engine_id,
            block_ids=tuple(block_ids),
            num_tokens=num_tokens,
            tp_size=self.tp_size,
            sources=tuple(self._group_sources),
            compat=self.compat,
            compat_digest=self.compat.digest,
            lease_deadline=lease.deadline,
            memory_kind=self.memory_kind,
        )

    def revoke(self, request_id: str) -> bool:
        return self.leases.release(request_id) is not None

    def collect_ended_leases(self) -> list[tuple[str, str]]:
        released = [msg[len(_RELEASE_PREFIX):].decode()
                    for messages in self.agent.get_new_notifs().values()
                    for msg in messages if msg.startswith(_RELEASE_PREFIX)]
        return self.leases.collect_ended(released)

    # -- receiver side ------------------------------------------------------------------------
    def start_pull(self, pull_id: str, handle: KVHandle, src_block_ids: list[int],
                   dst_block_ids: list[int]) -> None:
        handle.check_receivable(self.compat)
        if len(src_block_ids) != len(dst_block_ids):
            raise ValueError("source and destination block lists differ in length")
        if pull_id in self._pulls:
            raise ValueError(f"a pull named {pull_id!r} is already in flight")
        pull = _Pull(handle)
        remaining = handle.lease_deadline - self.settings.lease_margin_s - time.time()
        pull.deadline = time.time() + min(self.settings.pull_timeout_s, remaining)
        self._pulls[pull_id] = pull
        if remaining <= 0:
            pull.error = (f"KV lease of {handle.request_id!r} expired "
                          f"{-remaining:.1f}s before the pull could start")
            return
        if not src_block_ids:
            return
        total_heads = self.compat.num_kv_heads
        try:
            for piece in plan_head_slices(total_heads, handle.tp_size, self.tp_size, self.tp_rank):
                src = handle.sources[piece.src_rank]
                self._load_agent(src)
                remote_layout = self._remote_layout(handle, src)
                # One descriptor per block: the heads of a block are one run on both sides.
                remote = self._dlist(src.agent_name, handle.memory_kind, remote_layout,
                                     src.base_address, src.device_id, piece.src_head,
                                     piece.num_heads)
                local = self._dlist("NIXL_INIT_AGENT", self.memory_kind, self.layout,
                                    self.kv_buffer.data_ptr(), self.device_id, piece.dst_head,
                                    piece.num_heads)
                ridx = np.asarray(src_block_ids, dtype=np.int32)
                lidx = np.asarray(dst_block_ids, dtype=np.int32)
                piece_bytes = len(lidx) * piece.num_heads * self.layout.head_bytes
                xfer = self.agent.make_prepped_xfer("READ", local, lidx, remote, ridx)
                pull.xfers.append(xfer)
                pull.num_bytes += piece_bytes
                if self.agent.transfer(xfer) == "ERR":
                    pull.error = f"posting the read from {src.agent_name} failed"
                    return
        except Exception as e:  # NIXL raises its own types (e.g. remote disconnect)
            pull.error = _describe_failure(handle, e)

    def poll_pulls(self) -> list[PullResult]:
        now = time.time()
        for rid, pull in list(self._pulls.items()):
            result = None
            if pull.error is None:
                try:
                    states = [self.agent.check_xfer_state(x) for x in pull.xfers]
                except Exception as e:
                    states, pull.error = [], _describe_failure(pull.handle, e)
                if "ERR" in states:
                    pull.error = f"a read from the owner of {rid!r} failed"
                elif all(s == "DONE" for s in states) and pull.error is None:
                    elapsed = time.perf_counter() - pull.started
                    result = PullResult(rid, True, None, pull.num_bytes, elapsed)
                    self.bytes_pulled += pull.num_bytes
                    self.seconds_pulling += elapsed
                elif now > pull.deadline:
                    pull.error = (f"KV pull of {rid!r} timed out after "
                                  f"{time.perf_counter() - pull.started:.1f}s")
            if pull.error is not None:
                result = PullResult(rid, False, pull.error, 0, time.perf_counter() - pull.started)
            if result is not None:
                self._finish(rid)
                self._done.append(result)
        done, self._done = self._done, []
        return done

    def release(self, handle: KVHandle) -> None:
        owner = handle.sources[0]
        try:
            self._load_agent(owner)
            self.agent.send_notif(owner.agent_name, _RELEASE_PREFIX + handle.request_id.encode())
        except Exception as e:  # the owner is gone: its lease dies with it
            log.warning("could not release %s at %s: %s", handle.request_id, owner.agent_name, e)

    def close(self) -> None:
        for rid in list(self._pulls):
            self._finish(rid)
        self._dlists.clear()
        try:
            self.agent.deregister_memory(self._registration)
        except Exception as e:
            log.debug("deregistering KV memory failed: %s", e)

    # -- internals ----------------------------------------------------------------------------
    def _finish(self, rid: str) -> None:
        pull = self._pulls.pop(rid)
        for x in pull.xfers:
            try:
                x.release()
            except Exception as e:  # an in-flight read that cannot be cancelled
                log.warning("releasing a transfer of %s failed: %s", rid, e)

    def _load_agent(self, src: SourceRank) -> None:
        if src.agent_name == self.agent_name or src.agent_name in self._loaded_agents:
            return
        self.agent.add_remote_agent(src.agent_metadata)
        self._loaded_agents.add(src.agent_name)

    def _remote_layout(self, handle: KVHandle, src: SourceRank) -> RegionLayout:
        return RegionLayout(self.layout.num_layers, src.num_blocks,
                            self.compat.num_kv_heads // handle.tp_size, self.layout.block_size,
                            self.layout.head_dim, self.layout.elem_bytes)

    def _dlist(self, agent: str, memory_kind: str, layout: RegionLayout, base: int,
               device_id: int, head: int, num_heads: int):
        """Prepared descriptors, one per block of the region, covering heads
        [head, head + num_heads) of each block; prepared once per (region, head range)."""
        key = (agent, base, layout.num_blocks, layout.num_heads, head, num_heads)
        handle = self._dlists.get(key)
        if handle is None:
            count = layout.num_blocks
            starts = (base + head * layout.head_bytes
                      + np.arange(count, dtype=np.uint64) * np.uint64(layout.block_bytes))
            descs = np.stack([
                starts,
                np.full(count, num_heads * layout.head_bytes, dtype=np.uint64),
                np.full(count, device_id, dtype=np.uint64),
            ], axis=1)
            handle = self.agent.prep_xfer_dlist(agent, descs, memory_kind)
            self._dlists[key] = handle
        return handle


def contiguous_runs(src: list[int], dst: list[int]) -> list[tuple[int, int, int]]:
    """(src_start, dst_start, length) runs where both block lists advance by one together:
    how many descriptors a pull of these blocks becomes once NIXL merges adjacent ones."""
    runs: list[tuple[int, int, int]] = []
    for s, d in zip(src, dst, strict=True):
        if runs:
            s0, d0, n = runs[-1]
            if s == s0 + n and d == d0 + n:
                runs[-1] = (s0, d0, n + 1)
                continue
        runs.append((s, d, 1))
    return runs


def _describe_failure(handle: KVHandle, error: Exception) -> str:
    text = str(error)
    if "DISCONNECT" in text.upper() or "UNREACH" in text.upper():
        return (f"the KV owner {handle.engine_id} (agent {handle.sources[0].agent_name}) is "
                f"unreachable: {text}")
    return f"KV pull of {handle.request_id!r} failed: {type(error).__name__}: {text}"
