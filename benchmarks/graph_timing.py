"""Kernel time as a model step sees it: calls captured in one CUDA graph, each on its own copy
of the weights, the copies together several times the L2.

``triton.testing.do_bench`` times one call after zeroing a 256 MB buffer to flush the L2; the
zeroing leaves the L2 full of dirty lines that the timed kernel then writes back, and a launch
per call adds its own gap. For a 4096 x 4096 FP8 GEMV (16.8 MB, ~4 us at the copy rate) that
bias was larger than the kernel. In a decode step's graph consecutive linears read different
weights, so: capture ``calls`` calls round-robin over ``copies`` weight copies, replay, divide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

L2_MULTIPLE_BYTES = 400 << 20  # the copies together: several times an H200's 60 MB L2


def copies_for(nbytes: int, at_least: int = 2) -> int:
    """How many copies of ``nbytes`` of weights keep each call's reads out of the L2."""
    return max(at_least, -(-L2_MULTIPLE_BYTES // max(nbytes, 1)))


def graph_us(fns: Sequence[Callable[[], Any]], calls: int = 48, replays: int = 5) -> float:
    """Median microseconds per call of ``fns`` (one per weight copy) called round-robin inside
    one captured CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (compiles, cuBLAS workspaces) off the capture
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fns[i % len(fns)]()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(1e3 * start.elapsed_time(end) / calls)
    del graph
    return sorted(times)[len(times) // 2]
