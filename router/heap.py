"""The router's garbage-collector settings, applied once it has loaded (issue 16).

A streamed request allocates hundreds of container objects (frames, protobuf messages, dicts,
coroutines). With CPython's default thresholds a young collection runs every 700 net
allocations, and every tenth of those promotes the objects of the requests in flight, so the
older collections, and now and then a full one, walk them again together with everything the
router holds from startup (tokenizer, chat template, FastAPI's routes and models; the process
tracks ~90,000 objects while it serves). Measured on the 2-core VM in one benchmarks/
router_bench.py run (a ``gc.callbacks`` probe): the router spent 1.07 s of its 12.6 s of CPU in
1,691 collections.

So, once the startup objects exist, they move to the permanent generation (``gc.freeze``:
never traversed again) and young collections run every YOUNG_THRESHOLD allocations. Cycles
are still collected; they just wait a little longer. Called by router/serve.py just before
it serves, not by the app itself: tests build the app inside pytest's process.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 10_000  # CPython's default: 700
OLDER_THRESHOLDS = (20, 20)  # young collections per middle one, middle ones per full one


def settle() -> None:
    """Collect what startup left behind, freeze the rest, and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    log.info("heap settled: %d objects frozen, gc thresholds %s", gc.get_freeze_count(),
             gc.get_threshold())
