"""GPU hand-out of the local launcher (no GPU needed: only the environment is checked)."""

import subprocess

import pytest

from deploy.local_cluster import ClusterSpec, LocalCluster


def test_workers_get_disjoint_gpus(tmp_path, monkeypatch):
    spawned = []

    # Workers that would own GPUs cannot start on this machine: record their environment.
    class FakePopen:
        def __init__(self, cmd, env=None, **kwargs):
            spawned.append(env.get("CUDA_VISIBLE_DEVICES"))

        def poll(self):
            return None

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    cluster = LocalCluster(ClusterSpec(decode_tp=2, gpus=(0, 1, 2, 3), log_dir=tmp_path,
                                       redis_url="redis://unused"))
    cluster.add_worker("prefill")
    cluster.add_worker("prefill")
    cluster.add_worker("decode")
    assert spawned == ["0", "1", "2,3"]
    with pytest.raises(RuntimeError, match="not enough free GPUs"):
        cluster.add_worker("decode")
