"""Build the KV connector of one engine rank from the engine's ``kv_transfer`` setting.

The one place that knows which data planes exist ("none", "nixl"; a new one is a new branch
here and a new connector file) and how a tensor-parallel group shares one: every rank gets its
own connector over its own KV memory; rank 0's is wrapped in the fan-out so that the engine
talks to one connector per group (``tp_fanout.py``).
"""

from __future__ import annotations

import torch

from kv_transfer.connector import KVConnector
from kv_transfer.handle import KVCompat
from kv_transfer.layout import RegionLayout
from kv_transfer.nixl_connector import NixlConnector, NixlSettings
from kv_transfer.tp_fanout import ControlChannel, TensorParallelConnector


def build_connector(
    kind: str,
    *,
    engine_id: str | None,
    rank: int,
    world: int,
    kv_buffer: torch.Tensor,
    layout: RegionLayout,
    compat: KVCompat,
    pull_timeout_s: float,
    control: ControlChannel | None,
    advertise_host: str | None = None,
) -> KVConnector | None:
    """This rank's connector, or None for ``kind == "none"``.

    ``advertise_host`` is where peers reach this rank's agent (None: this machine only); it
    picks UCX's transport and interface. With ``world > 1`` every rank of the group must call
    this at the same point: the ranks exchange their sources over ``control`` so rank 0 can
    advertise all of them in its handles.
    """
    if kind == "none":
        return None
    if kind != "nixl":
        raise ValueError(f"kv_transfer must be 'none' or 'nixl', got {kind!r}")
    assert engine_id, "the engine assigns an id before building runners"
    settings = NixlSettings.for_device(kv_buffer.device, advertise_host,
                                       pull_timeout_s=pull_timeout_s)
    connector = NixlConnector(engine_id, rank, world, kv_buffer, layout, compat, settings)
    if world == 1:
        return connector
    assert control is not None, "a TP group needs its control channel"
    # Rank 0 advertises every rank's region in its handles, and drives the followers'
    # pulls when it receives.
    sources = control.all_gather(connector.source)
    if rank > 0:
        return connector
    connector.set_group_sources(sources)
    return TensorParallelConnector(connector, world, control)
