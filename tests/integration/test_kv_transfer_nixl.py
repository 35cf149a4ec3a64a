"""Real NIXL (UCX over shared memory) between real processes on CPU."""

import pickle
import time

import pytest
import torch

pytest.importorskip("nixl_cu12", reason="needs the nixl extra (pip install 'pdserve[nixl]')")

from kv_transfer.handle import IncompatibleKVError, KVHandle, SourceRank  # noqa: E402
from tests.kv_peer import HEADS, Peer, compat, global_kv, head_slice, owner_group  # noqa: E402

SEED = 1234


@pytest.fixture
def peers():
    started = []
    yield started
    for p in started:
        p.stop()


def test_multi_block_pull_is_byte_identical_and_release_reaches_owner(peers):
    owner = owner_group(1, SEED, "owner-a")
    receiver = Peer(0, 1, None, "recv-a")
    peers.extend(owner + [receiver])
    src_blocks, dst_blocks = [7, 2, 9, 4, 0], [1, 3, 5, 6, 11]
    handle = owner[0].call("describe", ("req-1", src_blocks, 20, 30.0))
    result, _, buffer = receiver.call("pull", (handle, src_blocks, dst_blocks))
    assert result.ok, result.error
    kv = global_kv(SEED)
    assert torch.equal(buffer[dst_blocks], kv[src_blocks])
    untouched = [b for b in range(buffer.shape[0]) if b not in dst_blocks]
    assert torch.count_nonzero(buffer[untouched]) == 0  # nothing else written
    assert result.num_bytes == buffer[dst_blocks].numel() * 4
    receiver.call("release", handle)
    assert owner[0].call("collect", 5.0) == [("req-1", "released")]


def test_consecutive_blocks_travel_as_runs_byte_identical(peers):
    owner = owner_group(1, SEED, "owner-runs")
    receiver = Peer(0, 1, None, "recv-runs")
    peers.extend(owner + [receiver])
    src_blocks, dst_blocks = [2, 3, 4, 9, 10], [5, 6, 7, 0, 1]  # two runs: 3 and 2 blocks
    handle = owner[0].call("describe", ("req-runs", src_blocks, 20, 30.0))
    result, _, buffer = receiver.call("pull", (handle, src_blocks, dst_blocks))
    assert result.ok, result.error
    assert torch.equal(buffer[dst_blocks], global_kv(SEED)[src_blocks])
    untouched = [b for b in range(buffer.shape[0]) if b not in dst_blocks]
    assert torch.count_nonzero(buffer[untouched]) == 0


@pytest.mark.parametrize("src_tp,dst_tp", [(1, 2), (2, 1)])
def test_heterogeneous_tp_head_slices(peers, src_tp, dst_tp):
    owners = owner_group(src_tp, SEED, f"owner-tp{src_tp}")
    receivers = [Peer(r, dst_tp, None, f"recv-tp{dst_tp}") for r in range(dst_tp)]
    peers.extend(owners + receivers)
    src_blocks, dst_blocks = [3, 8, 1], [0, 10, 4]
    handle = owners[0].call("describe", ("req-tp", src_blocks, 12, 30.0))
    assert len(handle.sources) == src_tp
    kv = global_kv(SEED)
    for rank, receiver in enumerate(receivers):
        result, _, buffer = receiver.call("pull", (handle, src_blocks, dst_blocks))
        assert result.ok, result.error
        expected = head_slice(kv, rank, dst_tp)[src_blocks]
        assert buffer.shape[1] == HEADS // dst_tp
        assert torch.equal(buffer[dst_blocks], expected), f"rank {rank}"


def test_lease_expiry_frees_owner_blocks(peers):
    owner = owner_group(1, SEED, "owner-lease")
    peers.extend(owner)
    owner[0].call("describe", ("never-pulled", [1, 2], 8, 0.3))
    # Deadline 0.3 s plus 0.2 s grace: the owner reports it expired, so it frees the blocks.
    assert owner[0].call("collect", 5.0) == [("never-pulled", "expired")]


def test_killed_owner_fails_pull_quickly(peers):
    owner = owner_group(1, SEED, "owner-dies")
    receiver = Peer(0, 1, None, "recv-dies")
    peers.extend(owner + [receiver])
    handle = owner[0].call("describe", ("req-dead", [1, 2, 3], 12, 30.0))
    result, _, _ = receiver.call("pull", (handle, [1, 2, 3], [4, 5, 6]))
    assert result.ok  # a first pull connects the agents
    handle2 = owner[0].call("describe", ("req-dead-2", [1, 2, 3], 12, 30.0))
    owner[0].process.kill()
    owner[0].process.join()
    started = time.time()
    result, elapsed, _ = receiver.call("pull", (handle2, [1, 2, 3], [7, 8, 9]), timeout=30)
    assert not result.ok
    assert "unreachable" in result.error or "failed" in result.error or "timed out" in result.error
    assert time.time() - started < 15  # bounded: the pull timeout is 10 s


def test_pull_of_expired_lease_is_refused(peers):
    owner = owner_group(1, SEED, "owner-late")
    receiver = Peer(0, 1, None, "recv-late")
    peers.extend(owner + [receiver])
    handle = owner[0].call("describe", ("req-late", [1], 4, 0.1))
    time.sleep(0.2)
    result, _, buffer = receiver.call("pull", (handle, [1], [2]))
    assert not result.ok and "expired" in result.error
    assert torch.count_nonzero(buffer) == 0


def test_incompatible_kv_is_refused_with_the_difference_named(peers):
    owner = owner_group(1, SEED, "owner-compat")
    receiver = Peer(0, 1, None, "recv-compat", block_size=8, kv_dtype="bfloat16")
    peers.extend(owner + [receiver])
    handle = owner[0].call("describe", ("req-x", [1], 4, 30.0))
    with pytest.raises(RuntimeError) as err:
        receiver.call("pull", (handle, [1], [2]))
    assert "IncompatibleKVError" in str(err.value)
    assert "block_size: local 8 vs remote 4" in str(err.value)
    assert "kv_dtype" in str(err.value)


def test_handle_round_trip_and_version_check():
    """The proto is the one serialization (router <-> workers); processes of one host (the TP
    fan-out, these peers) ship the frozen handle itself, pickled."""
    from proto.convert import handle_from_bytes, handle_to_bytes

    handle = KVHandle(
        request_id="r", engine_id="e", block_ids=(1, 2), num_tokens=8, tp_size=1,
        sources=(SourceRank(tp_rank=0, agent_name="a", agent_metadata=b"\x00\x01",
                            base_address=4096, num_blocks=10),),
        compat=compat(), compat_digest=compat().digest, lease_deadline=1.0,
        protocol_version=99, extra={"note": [1, {"nested": True}]},
    )
    assert handle_from_bytes(handle_to_bytes(handle)) == handle
    assert pickle.loads(pickle.dumps(handle)) == handle
    with pytest.raises(IncompatibleKVError, match="protocol version 99"):
        handle.check_receivable(compat())
    with pytest.raises(IncompatibleKVError, match="malformed"):
        handle_from_bytes(b"\xff\xff\xff")


def test_connector_leaves_no_ucx_settings_for_child_processes(monkeypatch):
    """Its UCX settings apply to its own backend only: a process it starts (a worker on another
    simulated host) must choose its own transport, not inherit shared memory from this one.
    An operator's explicit setting is left as it was."""
    from kv_transfer.layout import RegionLayout
    from kv_transfer.nixl_connector import NixlConnector, NixlSettings
    from tests.kv_peer import BLOCK_SIZE, BLOCKS, HEAD_DIM, LAYERS

    monkeypatch.delenv("UCX_TLS", raising=False)
    monkeypatch.setenv("UCX_NET_DEVICES", "lo")  # the operator's
    buffer = torch.zeros(BLOCKS, HEADS, LAYERS, 2, BLOCK_SIZE, HEAD_DIM)
    layout = RegionLayout(LAYERS, BLOCKS, HEADS, BLOCK_SIZE, HEAD_DIM, 4)
    settings = NixlSettings(ucx_tls="shm,self", ucx_net_devices="eth9")
    conn = NixlConnector("env-probe", 0, 1, buffer, layout, compat(), settings)
    try:
        import os

        assert "UCX_TLS" not in os.environ
        assert os.environ["UCX_NET_DEVICES"] == "lo"
    finally:
        conn.close()
