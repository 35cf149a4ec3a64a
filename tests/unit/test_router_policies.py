"""Routing decisions as pure functions, and the router's in-memory structures."""

from collections import Counter

import pytest

from common.redis_schema import Keys, WorkerRecord
from router.index_accuracy import IndexAccuracy
from router.policies import (
    Candidate,
    PolicyWeights,
    choose_decode,
    choose_migration_target,
    choose_prefill,
    local_prefill_reason,
    prefill_cost,
    prefill_saturated,
)
from router.prefix_index import PrefixIndex
from router.registry import RegistryView

W = PolicyWeights()


def test_overlap_beats_load_up_to_the_trade_off():
    cached = Candidate("a", cached_tokens=512, queued_tokens=300)
    idle = Candidate("b", cached_tokens=0, queued_tokens=0)
    assert choose_prefill("kv_aware", [cached, idle], 1000, W, 0).worker_id == "a"  # 788 < 1000
    busier = Candidate("a", cached_tokens=512, queued_tokens=600)  # 1088 > 1000
    assert choose_prefill("kv_aware", [busier, idle], 1000, W, 0).worker_id == "b"
    # Weighing load less makes the cache hit win again.
    light = PolicyWeights(load_weight=0.5)
    assert choose_prefill("kv_aware", [busier, idle], 1000, light, 0).worker_id == "a"
    assert prefill_cost(busier, 1000, light) == 788


def test_ties_are_broken_fairly():
    cands = [Candidate(w) for w in "xyz"]
    for policy in ("kv_aware", "least_loaded", "round_robin"):
        picks = Counter(choose_prefill(policy, cands, 100, W, n).worker_id for n in range(9))
        assert picks == {"x": 3, "y": 3, "z": 3}, policy


def test_random_and_least_loaded():
    cands = [Candidate("a", queued_tokens=50), Candidate("b", queued_tokens=10)]
    assert choose_prefill("least_loaded", cands, 100, W, 0).worker_id == "b"
    import random

    picks = {choose_prefill("random", cands, 100, W, 0, random.Random(s)).worker_id
             for s in range(20)}
    assert picks == {"a", "b"}


def test_decode_placement_by_load_and_headroom():
    full = Candidate("full", running=0, kv_usage=0.97)
    busy = Candidate("busy", running=5, kv_usage=0.2)
    free = Candidate("free", running=1, kv_usage=0.1)
    assert choose_decode([full, busy, free], W, 0).worker_id == "free"
    assert choose_decode([full, busy], W, 0).worker_id == "busy"  # full only if all are
    assert choose_decode([full], W, 0).worker_id == "full"


# Live decode workers as (id, streams in flight, KV usage), the ids this request already failed
# on, the tie-break counter -> where the stream continues (None: nowhere left).
MIGRATION = [
    (([("a", 0, 0.1)], {"a"}, 0), None),  # the only worker is the one that failed
    (([], set(), 0), None),  # nobody live
    (([("a", 3, 0.1), ("b", 9, 0.1)], {"x"}, 0), "a"),  # the failed one has already gone
    (([("a", 3, 0.1), ("b", 1, 0.1)], {"b"}, 0), "a"),  # the lighter one failed: not it again
    (([("a", 3, 0.1), ("b", 1, 0.1), ("c", 2, 0.1)], {"b"}, 0), "c"),  # least loaded of the rest
    # KV headroom counts as in choose_decode: 2 + 8 x 0.5 = 6 against 4 + 8 x 0.1 = 4.8 ...
    (([("a", 2, 0.5), ("b", 4, 0.1)], set(), 0), "b"),
    # ... and a worker over the KV limit is taken only if every one left is.
    (([("a", 0, 0.97), ("b", 6, 0.2), ("c", 0, 0.1)], {"c"}, 0), "b"),
    (([("a", 0, 0.97), ("b", 6, 0.2)], {"b"}, 0), "a"),
    (([("a", 1, 0.0), ("b", 1, 0.0), ("c", 0, 0.0)], {"c"}, 0), "a"),  # a tie: the counter
    (([("a", 1, 0.0), ("b", 1, 0.0), ("c", 0, 0.0)], {"c"}, 1), "b"),  # ... rotates it
]


@pytest.mark.parametrize("case, target", MIGRATION)
def test_migration_target(case, target):
    workers, failed, counter = case
    candidates = [Candidate(w, running=running, kv_usage=kv) for w, running, kv in workers]
    chosen = choose_migration_target(candidates, failed, W, counter)
    assert (chosen.worker_id if chosen else None) == target


def test_prefill_saturation():
    assert not prefill_saturated([], 100)  # no workers is not "saturated" (another reason)
    assert prefill_saturated([Candidate("a", queued_tokens=100)], 100)
    assert not prefill_saturated([Candidate("a", queued_tokens=100),
                                  Candidate("b", queued_tokens=99)], 100)  # one has room


# prompt, cached on the decode worker, cached on the chosen prefill worker, prefill workers,
# saturated -> where to prefill (None: remotely, pulling the KV). Threshold 32 tokens.
WHERE_TO_PREFILL = [
    ((10, 0, 0, 2, False), "short_uncached"),  # short and cached nowhere: a hop costs more
    ((500, 0, 0, 2, False), None),  # long and fresh: disaggregate
    ((500, 0, 0, 0, False), "no_prefill_workers"),
    ((500, 0, 496, 2, True), "saturated"),  # the pool is backed up: do not queue behind it
    # The prefill worker holds the whole prompt, the decode worker none of it: pull it. (The
    # old rule compared the *prefill* worker's hit with the threshold, called this "short
    # uncached" and recomputed all 500 tokens on the decode worker.)
    ((500, 0, 496, 2, False), None),
    ((100, 0, 96, 2, False), None),  # ... also for a prompt just over the threshold
    ((500, 496, 0, 2, False), "short_uncached"),  # the decode worker holds it: stay there
    ((500, 496, 496, 2, False), "short_uncached"),  # both hold it: no transfer needed
    ((2000, 1900, 0, 2, False), "cached_here"),  # 100 left here vs 2000 to compute there
    ((2000, 1900, 1984, 2, False), None),  # ... unless the prefill worker holds even more
    ((1000, 800, 0, 2, False), "cached_here"),  # 200 x 4 here vs 1000 + transfer there
    ((1000, 480, 0, 2, False), None),  # 520 x 4 here: too much decode time, go remote
]


@pytest.mark.parametrize("case, reason", WHERE_TO_PREFILL)
def test_where_to_prefill(case, reason):
    prompt, here, there, num_prefill, saturated = case
    assert local_prefill_reason(prompt, here, there, 32, num_prefill, saturated, W) == reason


def test_where_to_prefill_weights():
    # Without the extra weight on decode-side compute, only a strictly smaller amount of work
    # stays local; a costlier transfer makes local prefill win sooner.
    even = PolicyWeights(local_compute_weight=1.0, transfer_weight=0.0)
    assert local_prefill_reason(1000, 0, 0, 32, 2, False, even) == "cached_here"  # a tie
    assert local_prefill_reason(1000, 0, 10, 32, 2, False, even) is None
    costly = PolicyWeights(transfer_weight=4.0)
    assert local_prefill_reason(1000, 0, 0, 32, 2, False, costly) == "cached_here"


def test_fenced_and_draining_workers_are_never_candidates():
    registry = RegistryView(redis=None, keys=Keys())
    rec = lambda wid, role, **kw: WorkerRecord(wid, role, "h:1", "m", "d", 1, 16, 100, **kw)
    registry.workers = {"p1": rec("p1", "prefill"), "p2": rec("p2", "prefill"),
                        "p3": rec("p3", "prefill", draining=True), "d1": rec("d1", "decode"),
                        "b1": rec("b1", "both")}
    registry.fence("p1", seconds=60)
    assert [r.worker_id for r in registry.live("prefill")] == ["p2", "b1"]
    assert [r.worker_id for r in registry.live("decode")] == ["d1", "b1"]
    registry.fence("p2", seconds=-1)  # an expired fence lets the worker back in
    assert "p2" in [r.worker_id for r in registry.live("prefill")]


def test_prefix_index_prefix_semantics():
    index = PrefixIndex()
    index.add("a", [1, 2, 3, 4])
    index.add("b", [1, 2, 9])
    assert index.overlap([1, 2, 3, 4, 5], ["a", "b", "c"]) == {"a": 4, "b": 2, "c": 0}
    assert index.overlap([7, 2, 3], ["a"]) == {"a": 0}  # a prefix match, not any match
    index.remove("a", [2])
    assert index.overlap([1, 2, 3], ["a"]) == {"a": 1}
    index.drop_worker("b")
    assert index.overlap([1, 2], ["b"]) == {"b": 0}
    index.add("c", [1])  # reuses b's slot without inheriting its blocks
    assert index.overlap([1, 2], ["c", "a"]) == {"c": 1, "a": 1}
    assert index.num_blocks() == 3 and index.num_blocks("a") == 3


def test_index_accuracy_verdicts():
    acc = IndexAccuracy(window=20, min_samples=10)
    for _ in range(10):
        acc.record(64, 64)
    assert acc.verdict() == "ok" and acc.exact_share == 1.0
    for _ in range(20):
        acc.record(64, 0)
    assert acc.verdict() == "over-predicting"
    for _ in range(20):
        acc.record(0, 128)
    assert acc.verdict() == "under-predicting"


def test_index_accuracy_tallies_match_a_recount_of_the_window():
    """The shares kept as samples enter and leave the window equal counting the window."""
    import random

    rng = random.Random(3)
    acc = IndexAccuracy(window=16, min_samples=4, warn_every_s=1e9)
    for _ in range(500):
        acc.record(rng.choice((0, 32, 64)), rng.choice((0, 32, 64)))
        window = list(acc.samples)
        n = len(window)
        assert acc.exact_share == sum(p == r for p, r in window) / n
        over = sum(p > r for p, r in window) / n
        under = sum(p < r for p, r in window) / n
        want = ("ok" if n < 4 else "over-predicting" if over >= 0.5
                else "under-predicting" if under >= 0.5 else "ok")
        assert acc.verdict() == want


def test_sequential_requests_take_turns_on_both_pools():
    """With idle, equal workers, one request after another alternates over the decode workers
    and (round robin) over the prefill workers, though a remote prefill takes a turn of its own
    (its retry loop): the two kinds of choice keep separate turns. The Prefill call is answered
    by a stand-in stub; only the choices are under test."""
    import asyncio
    import time

    from common.redis_schema import Keys, WorkerRecord
    from common.sampling_params import SamplingParams
    from proto import pb
    from router.config import RouterConfig
    from router.dispatcher import Dispatcher, GenerateRequest
    from router.load_tracker import LoadTracker
    from router.metrics import RouterMetrics
    from router.prefix_index import PrefixIndex
    from router.registry import RegistryView

    class PrefillStub:
        async def Prefill(self, request, timeout=None):
            return pb.PrefillResponse(request_id=request.request_id, first_token=1)

    class Clients:
        token = None

        @staticmethod
        def stub(address):
            return PrefillStub()

    registry = RegistryView(redis=None, keys=Keys())
    now = time.time()
    registry.workers = {
        wid: WorkerRecord(wid, role, f"h:{i}", "m", "d", 1, 16, 1000, heartbeat_at=now)
        for i, (wid, role) in enumerate([("p0", "prefill"), ("p1", "prefill"),
                                         ("d0", "decode"), ("d1", "decode")])}
    config = RouterConfig(policy="round_robin", local_prefill_threshold_tokens=0)

    async def place(n: int) -> list[tuple[str, str]]:
        dispatcher = Dispatcher(config, registry, PrefixIndex(), Clients(), RouterMetrics(),
                                LoadTracker())
        out = []
        for i in range(n):
            req = GenerateRequest(f"r{i}", list(range(100, 164)), SamplingParams(max_tokens=4))
            plan = dispatcher.plan(req)
            await dispatcher._prefill(req, plan)
            out.append((plan.prefill.worker_id, plan.decode.worker_id))
        return out

    placed = asyncio.run(place(4))
    assert {p for p, _ in placed[:2]} == {"p0", "p1"}, placed
    assert {d for _, d in placed[:2]} == {"d0", "d1"}, placed
    assert placed[2:] == placed[:2], placed
