"""Readiness: can this router answer a generation request now, rather than 503?

``/health`` is liveness (the process serves HTTP); ``/ready`` is this. A request needs a live
decode worker (not draining, not fenced) and a known context limit (from ``--max-model-len`` or
the decode workers' records). A prefill worker is not required: when none is live (or none is
KV-compatible with the chosen decode worker) the dispatcher prefills on the decode worker
itself (``local_prefill_reason``: "no_prefill_workers"), so a decode pool alone serves every
request, only without disaggregation. The prefill pool's size is reported, not demanded.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.registry import RegistryView


@dataclass(frozen=True)
class Readiness:
    reason: str | None  # None: ready
    prefill_workers: int
    decode_workers: int

    @property
    def ready(self) -> bool:
        return self.reason is None

    def body(self) -> dict:
        return {"status": "ready" if self.ready else "not_ready",
                "prefill_workers": self.prefill_workers,
                "decode_workers": self.decode_workers,
                "prefill": "remote" if self.prefill_workers else "local"}


def readiness(registry: RegistryView, max_model_len: int | None) -> Readiness:
    prefill, decode = len(registry.live("prefill")), len(registry.live("decode"))
    reason = None
    if not decode:
        reason = ("no decode worker is live yet (workers register in Redis once their model "
                  "is loaded)" if registry.redis_ok is not False else
                  "no decode worker is known and Redis is unreachable")
    elif max_model_len is None:
        reason = ("no live decode worker reports its context length; start the router with "
                  "--max-model-len")
    return Readiness(reason, prefill, decode)
