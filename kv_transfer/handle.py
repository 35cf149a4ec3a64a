"""The KV handle: what a prefill engine tells a decode engine so it can pull a request's KV.

A plain, versioned message; its one serialization is the wire's ``KVHandle`` (see
``proto/convert.py``: ``handle_to_pb`` / ``handle_to_bytes`` and back). It names the owner's
blocks, how its KV memory is laid out on each of its tensor-parallel ranks (with each rank's
transfer-agent metadata, so a receiver needs no other lookup), a compatibility record, and the
lease deadline after which the owner may reuse the blocks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any

PROTOCOL_VERSION = 1


class IncompatibleKVError(ValueError):
    """The two engines' KV caches cannot exchange blocks; the message says what differs."""


@dataclass(frozen=True)
class KVCompat:
    """Everything that must match for KV bytes to mean the same thing on both sides."""

    model: str
    dtype: str  # activation dtype
    kv_dtype: str
    num_layers: int
    num_kv_heads: int  # total, before tensor parallelism
    head_dim: int
    block_size: int
    hash_seed: str  # block identities must agree too
    # An FP8 cache's scales, per layer K then V (empty for other KV dtypes): the same bytes
    # mean other values under other scales.
    kv_scales: tuple[float, ...] = ()

    @cached_property  # checked on every pull; the record never changes
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def check_compatible(self, remote: KVCompat, remote_digest: str) -> None:
        if remote_digest == self.digest and remote == self:
            return
        diffs = [
            f"{f.name}: local {getattr(self, f.name)!r} vs remote {getattr(remote, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(remote, f.name)
        ]
        if not diffs:
            diffs = [f"compatibility hash: local {self.digest} vs remote {remote_digest}"]
        hint = ""
        if self.kv_dtype != remote.kv_dtype:
            hint = (f" (the KV cache dtypes differ: this engine stores {self.kv_dtype}, the "
                    f"owner {remote.kv_dtype}; start both with the same --kv-cache-dtype)")
        raise IncompatibleKVError("incompatible KV cache: " + "; ".join(diffs) + hint)


@dataclass(frozen=True)
class SourceRank:
    """One tensor-parallel rank of the owner: its agent and its registered KV region."""

    tp_rank: int
    agent_name: str
    agent_metadata: bytes  # opaque, from the transfer backend; loaded once per agent
    base_address: int  # start of the rank's KV buffer
    num_blocks: int  # blocks in that buffer (same on every rank)
    device_id: int = 0


@dataclass(frozen=True)
class KVHandle:
    request_id: str
    engine_id: str  # the owning engine instance (unique per process start)
    block_ids: tuple[int, ...]  # the owner's blocks, in token order
    num_tokens: int  # tokens whose KV the blocks hold
    tp_size: int  # the owner's tensor-parallel size
    sources: tuple[SourceRank, ...]  # one per owner rank; sources[0] receives releases
    compat: KVCompat
    compat_digest: str
    lease_deadline: float  # unix time; after it the owner may reuse the blocks
    memory_kind: str = "DRAM"  # DRAM or VRAM
    protocol_version: int = PROTOCOL_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def check_receivable(self, local: KVCompat) -> None:
        """Refuse, naming what differs, a handle this engine cannot consume."""
        if self.protocol_version != PROTOCOL_VERSION:
            raise IncompatibleKVError(
                f"KV handle protocol version {self.protocol_version} is not supported "
                f"(this engine speaks version {PROTOCOL_VERSION})"
            )
        local.check_compatible(self.compat, self.compat_digest)
        if len(self.sources) != self.tp_size:
            raise IncompatibleKVError(
                f"KV handle lists {len(self.sources)} source ranks for TP size {self.tp_size}"
            )
