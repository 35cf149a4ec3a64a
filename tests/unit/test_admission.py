"""The backpressure decision (router/admission.py) and its slot accounting."""

import pytest
from prometheus_client import CollectorRegistry, Counter

from router.admission import Admission, decide
from router.errors import APIError


def test_decide_bounds_in_flight_per_eligible_worker():
    assert decide(0, 0, 4, 1).status == 503  # no decode worker: 503, whatever the limit
    assert decide(7, 2, 4, 1) is None
    full = decide(8, 2, 4, 3)
    assert (full.status, full.reason, full.retry_after_s) == (429, "overloaded", 3)
    assert decide(10**6, 1, 0, 1) is None  # 0: unbounded


def test_slots_release_once_and_refusals_are_counted():
    counter = Counter("rejected", "r", ["reason"], registry=CollectorRegistry())
    gate = Admission(limit_per_worker=1, retry_after_s=2, rejected_counter=counter)
    slot = gate.enter(eligible_workers=1)
    with pytest.raises(APIError) as refused:
        gate.enter(eligible_workers=1)
    body = refused.value.body()["error"]
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "2"}
    assert body["code"] == "rate_limit_exceeded" and "saturated" in body["message"]
    slot.release()
    slot.release()  # idempotent: every exit path may release
    assert gate.in_flight == 0
    gate.enter(eligible_workers=1).release()
    assert gate.rejected == {"overloaded": 1}
    assert counter.labels("overloaded")._value.get() == 1
