"""The benchmark's arithmetic and workload generators."""

import json
import math

import pytest

from benchmarks import workloads as w
from benchmarks.serving_metrics import RequestRecord, aggregate, percentile, summary


def record(sent, chunks, tokens=None, cached=0, prompt=10, error=None):
    r = RequestRecord(sent, prompt, 16, chunk_times=list(chunks),
                      chunk_tokens=[1] * len(chunks), done_at=chunks[-1] if chunks else None,
                      output_tokens=tokens if tokens is not None else len(chunks),
                      cached_tokens=cached, error=error)
    return r


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(values, 90) == pytest.approx(3.7)
    assert math.isnan(percentile([], 50))
    assert summary([2.0])["p99"] == 2.0


def test_ttft_tpot_and_itl_from_chunk_timestamps():
    r = record(10.0, [10.5, 10.7, 11.0, 11.1])
    assert r.ttft == pytest.approx(0.5)
    assert r.tpot == pytest.approx((11.1 - 10.5) / 3)
    assert r.itls() == pytest.approx([0.2, 0.3, 0.1])
    multi = record(0.0, [1.0, 1.4])
    multi.chunk_tokens = [1, 2]  # a chunk carrying two tokens splits its gap
    assert multi.itls() == pytest.approx([0.2, 0.2])
    assert record(0.0, [0.3], tokens=1).tpot is None


def test_goodput_counts_requests_meeting_both_slos():
    records = [
        record(0.0, [0.5, 0.55, 0.60]),  # ttft 0.5, tpot 0.05: good
        record(0.0, [1.5, 1.55]),  # ttft too slow
        record(0.0, [0.2, 0.5, 0.8]),  # tpot 0.3 too slow
        record(0.0, [], error="HTTP 503"),
    ]
    m = aggregate(records, duration_s=2.0, slo_ttft_s=1.0, slo_tpot_s=0.1)
    assert m["completed"] == 3 and m["errors"] == 1
    assert m["goodput"] == 0.5  # one good request over 2 s
    assert m["good_fraction"] == pytest.approx(1 / 3)
    assert m["request_throughput"] == 1.5


def test_cached_token_share():
    m = aggregate([record(0, [1], cached=30, prompt=100), record(0, [1], cached=10, prompt=100)],
                  1.0, 10, 10)
    assert m["cached_token_share"] == pytest.approx(0.2)


def test_workloads_are_seeded():
    for make in (lambda s: w.random_lengths(20, seed=s), lambda s: w.shared_prefix(seed=s),
                 lambda s: w.long_short_mix(20, seed=s)):
        assert make(1).sessions == make(1).sessions
        assert make(1).sessions != make(2).sessions


def test_shared_prefix_structure():
    wl = w.shared_prefix(num_groups=3, users_per_group=4, turns=3, system_tokens=64,
                         user_tokens=8, output_tokens=5, vocab=1000, seed=0)
    assert len(wl.sessions) == 12 and wl.num_requests == 36
    systems = {}
    for session in wl.sessions:
        group = session[0].prefix_group
        prefix = tuple(session[0].prompt[:64])
        assert systems.setdefault(group, prefix) == prefix  # one system prompt per group
        for earlier, later in zip(session, session[1:], strict=False):
            assert later.prompt[: len(earlier.prompt)] == earlier.prompt  # history grows
            assert len(later.prompt) > len(earlier.prompt) + 5
    assert len(set(systems.values())) == 3


def test_long_short_mix_shapes():
    wl = w.long_short_mix(400, long_fraction=0.25, long_input=1000, long_output=8,
                          short_input=50, short_output=100, seed=3)
    longs = [s[0] for s in wl.sessions if len(s[0].prompt) > 500]
    assert 0.18 < len(longs) / 400 < 0.32
    assert all(r.max_tokens <= 10 for r in longs)


def test_trace_replay(tmp_path):
    path = tmp_path / "trace.jsonl"
    rows = [{"timestamp": 0.0, "input_length": 40, "output_length": 5, "prefix_group": 1},
            {"timestamp": 0.5, "input_length": 30, "output_length": 7, "prefix_group": 1},
            {"timestamp": 1.0, "input_length": 10, "output_length": 2}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    wl = w.trace(path, prefix_tokens=16)
    reqs = [s[0] for s in wl.sessions]
    assert [r.at_s for r in reqs] == [0.0, 0.5, 1.0]
    assert [len(r.prompt) for r in reqs] == [40, 30, 10]
    assert reqs[0].prompt[:16] == reqs[1].prompt[:16]
    path.write_text('{"timestamp": 0}')
    with pytest.raises(ValueError, match="input_length"):
        w.trace(path)
