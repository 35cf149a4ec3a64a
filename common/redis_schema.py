"""Shared cluster state in Redis: key names, the worker record, KV-event stream entries.

Torch-free: the router imports it. Layout (prefix ``defaults.REDIS_KEY_PREFIX``, configurable so
several clusters can share one Redis):

- ``{p}workers``               set of worker ids (discovery; a missing record means gone)
- ``{p}worker:{id}``           JSON WorkerRecord, written each heartbeat with a TTL
- ``{p}kv_events:{id}``        Redis Stream of the worker's KV events, ``seq`` increasing by 1
- ``{p}kv_snapshot:{id}``      JSON {seq, hashes}: every cached block hash as of event ``seq``,
                               for consumers that detect a gap in the stream
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from common import defaults
from common.cluster_secret import ClusterSecret


@dataclass(frozen=True)
class Keys:
    prefix: str = defaults.REDIS_KEY_PREFIX

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}"

    def kv_events(self, worker_id: str) -> str:
        return f"{self.prefix}kv_events:{worker_id}"

    def kv_snapshot(self, worker_id: str) -> str:
        return f"{self.prefix}kv_snapshot:{worker_id}"

    def control(self) -> str:
        """A hash of operator commands (e.g. desired pool sizes), for ``pdserve scale``."""
        return f"{self.prefix}control"


@dataclass(frozen=True)
class WorkerRecord:
    """What a worker tells the cluster about itself, refreshed every heartbeat."""

    worker_id: str
    role: str  # prefill | decode | both
    address: str  # host:port of its gRPC service
    model: str
    compat_digest: str  # KV compatibility hash: only compatible workers exchange KV
    tp_size: int
    block_size: int
    num_blocks: int
    num_free_blocks: int = 0
    kv_usage: float = 0.0
    num_waiting: int = 0  # queue depth
    num_running: int = 0
    num_held_leases: int = 0
    max_model_len: int = 0
    draining: bool = False
    metrics_port: int = 0
    engine_id: str = ""
    api_version: int = 1
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Decode roles: host:port of the outputs socket (proto/frames.py), which routers read
    # decode outputs from; "" when it is off (they use the gRPC Outputs stream instead).
    outputs_address: str = ""
    # HMAC of every other field with the cluster secret's signing key (common/cluster_secret.py):
    # the router routes only to records it can verify, so a record planted in Redis by someone
    # without the secret (an address of theirs, to capture prompts) is never used.
    signature: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def signed_payload(self) -> bytes:
        """The canonical bytes the signature covers: all fields but the signature."""
        fields = asdict(self)
        del fields["signature"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, secret: ClusterSecret | None) -> WorkerRecord:
        if secret is None:
            return self
        return replace(self, signature=secret.sign(self.signed_payload()))

    def verified_by(self, secret: ClusterSecret) -> bool:
        return secret.verify(self.signed_payload(), self.signature)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerRecord:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def can_prefill(self) -> bool:
        return self.role in ("prefill", "both")

    @property
    def can_decode(self) -> bool:
        return self.role in ("decode", "both")


# -- KV events on the wire --------------------------------------------------------------------
STORED, REMOVED, CLEARED = "stored", "removed", "cleared"


@dataclass(frozen=True)
class KVEventEntry:
    """One stream entry. ``hashes`` are unsigned 64-bit block hashes."""

    seq: int
    kind: str  # stored | removed | cleared
    hashes: tuple[int, ...] = ()
    parent: int | None = None

    def to_fields(self) -> dict[str, str]:
        return {
            "seq": str(self.seq),
            "kind": self.kind,
            "hashes": ",".join(format(h, "x") for h in self.hashes),
            "parent": "" if self.parent is None else format(self.parent, "x"),
        }

    @classmethod
    def from_fields(cls, fields: dict) -> KVEventEntry:
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                          else v) for k, v in fields.items()}
        hashes = tuple(int(h, 16) for h in f.get("hashes", "").split(",") if h)
        parent = int(f["parent"], 16) if f.get("parent") else None
        return cls(int(f["seq"]), f["kind"], hashes, parent)
