"""The router's in-flight counters stay exact and never go negative when a worker is forgotten
(evicted from the registry) while its streams are still running."""

from contextlib import ExitStack

from router.load_tracker import LoadTracker


def test_forget_mid_flight_never_drives_a_counter_negative():
    load = LoadTracker()
    with ExitStack() as old_streams:
        for _ in range(2):
            old_streams.enter_context(load.decoding("d1"))
        old_streams.enter_context(load.prefilling("p1", 100))
        assert load.decode_streams["d1"] == 2 and load.prefill_tokens["p1"] == 100
        load.forget("d1")  # evicted mid-flight (e.g. a Redis outage), its streams go on
        load.forget("p1")
        # The worker is back and gets a new placement: the old streams still count.
        with load.decoding("d1"):
            assert load.decode_streams["d1"] == 3
        assert load.decode_streams["d1"] == 2
    # The old streams ended: they decremented what they had incremented, down to zero.
    assert load.decode_streams["d1"] == 0
    assert load.prefill_tokens["p1"] == 0
    assert all(v >= 0 for v in load.decode_streams.values())
    assert all(v >= 0 for v in load.prefill_tokens.values())


def test_new_placements_count_correctly_after_the_worker_is_gone():
    load = LoadTracker()
    stream = load.decoding("d1")
    stream.__enter__()
    load.forget("d1")
    stream.__exit__(None, None, None)  # the last placement of a forgotten worker ends
    assert "d1" not in load.decode_streams  # dropped once nothing is in flight there
    with load.decoding("d1"), load.decoding("d1"):
        assert load.decode_streams["d1"] == 2
    assert load.decode_streams["d1"] == 0
    with load.prefilling("p1", 7):
        load.forget("p1")
        with load.prefilling("p1", 5):
            assert load.prefill_tokens["p1"] == 12
        assert load.prefill_tokens["p1"] == 7
    assert load.prefill_tokens["p1"] == 0


def test_forget_of_an_idle_worker_drops_it_and_an_exception_still_decrements():
    load = LoadTracker()
    with load.decoding("d1"):
        pass
    load.forget("d1")
    assert "d1" not in load.decode_streams and load.decode_streams.get("d1", 0) == 0
    try:
        with load.decoding("d2"):
            raise RuntimeError("the stream failed")
    except RuntimeError:
        pass
    assert load.decode_streams["d2"] == 0
