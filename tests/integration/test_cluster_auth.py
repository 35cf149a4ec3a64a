"""Trust inside the cluster (issue 17): the three attacks an attacker on the same host could
mount against the first wave's cluster fail with the defaults, each with a log line, and the
cluster serves on with the secret in place.

1. A direct RPC to a worker without the cluster's token (the router's API key bypassed).
2. A worker record planted in Redis pointing at the attacker's port, to capture prompts.
3. A write to the control hash that decides how many workers the launcher spawns.

Real Redis (locked with the session's secret, tests/conftest.py), real worker and router
processes, the official openai client.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import grpc
import httpx
import pytest
import redis

from common.cluster_secret import ClusterSecret
from common.redis_acl import ADMIN, ROUTER, WORKER, url_for_role
from common.redis_schema import Keys, WorkerRecord
from proto import API_VERSION, auth, pb, pb_grpc
from tests.cluster_helpers import RouterProcess, WorkerProcess, cluster_secret, worker_channel

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")

PREFIX = "auth-test:"


@pytest.fixture(scope="module")
def cluster(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir), "--redis-prefix", PREFIX]
    workers = [WorkerProcess("prefill", model, redis_server.url)]
    router = None
    try:  # a worker or the router failing to start must not leave the others running
        workers.append(WorkerProcess("decode", model, redis_server.url))
        router = RouterProcess(redis_server.url, model + ["--api-key", "victim-key"],
                               wait_for=(1, 1))
        yield workers[0], workers[1], router, demo_model_dir.name
    finally:
        if router is not None:
            router.stop()
        for w in workers:
            w.stop()


def _submit_prefill_here(token_ids: list[int]) -> pb.DecodeRequest:
    request = pb.DecodeRequest(api_version=API_VERSION, request_id="attacker-1",
                               prompt_token_ids=token_ids, router_id="attacker")
    request.sampling.max_tokens = 4
    request.prefill_here.SetInParent()
    return request


def _log_has(process, text: str, timeout_s: float = 10.0) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if any(text in line for line in process.log_lines):
            return True
        time.sleep(0.1)
    return False


def test_direct_rpc_without_the_token_is_refused(cluster):
    _, decode, _, _ = cluster

    async def attack():
        async with grpc.aio.insecure_channel(decode.address) as channel:
            stub = pb_grpc.WorkerStub(channel)
            outcomes = {}
            for name, metadata in (("no token", ()),
                                   ("wrong token", auth.call_metadata("0" * 64))):
                try:
                    await stub.Submit(_submit_prefill_here([1, 2, 3]), metadata=metadata,
                                      timeout=10)
                    outcomes[name] = "answered"
                except grpc.aio.AioRpcError as e:
                    outcomes[name] = e.code()
            stream = stub.Outputs(pb.OutputsRequest(router_id="attacker"), timeout=10)
            try:
                async for _ in stream:
                    outcomes["outputs"] = "streamed"
                    break
            except grpc.aio.AioRpcError as e:
                outcomes["outputs"] = e.code()
            health = await stub.Health(pb.HealthRequest(), timeout=10)  # probes stay open
            return outcomes, health

    outcomes, health = asyncio.run(attack())
    assert outcomes == {"no token": grpc.StatusCode.UNAUTHENTICATED,
                        "wrong token": grpc.StatusCode.UNAUTHENTICATED,
                        "outputs": grpc.StatusCode.UNAUTHENTICATED}
    assert health.ok
    assert _log_has(decode, "unauthenticated call(s)")

    async def as_the_router():  # the same call with the cluster's token is served
        async with worker_channel(decode.address) as channel:
            return await pb_grpc.WorkerStub(channel).Stats(pb.StatsRequest(), timeout=10)

    assert asyncio.run(as_the_router()).worker_id == decode.worker_id


class _Listener:
    """The attacker's "worker": a TCP port that counts who connects to it."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass

    def close(self):
        self._stop = True
        self.thread.join()
        self.sock.close()


def test_a_planted_worker_gets_no_traffic(redis_server, cluster):
    prefill, decode, router, model = cluster
    keys = Keys(PREFIX)
    listener = _Listener()
    try:
        # Without credentials Redis takes no write at all ...
        with pytest.raises(redis.exceptions.RedisError):
            redis.Redis.from_url(redis_server.url, protocol=2).set(keys.worker("evil"), "{}")
        # ... nor with a guessed secret's credentials.
        guessed = url_for_role(redis_server.url, ClusterSecret("guessed-secret-123456"), WORKER)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(guessed).set(keys.worker("evil"), "{}")
        # An attacker who can write to Redis anyway (say its credentials leaked, or Redis is
        # shared with another application) plants records the router must not trust: one
        # unsigned, one signed with the wrong secret, both the least loaded decode worker.
        admin = redis_server.client()
        real = WorkerRecord.from_json(admin.get(keys.worker(decode.worker_id)))
        for worker_id, secret in (("evil-unsigned", None),
                                  ("evil-forged", ClusterSecret("not-the-cluster-secret"))):
            planted = WorkerRecord(**{**real.__dict__, "worker_id": worker_id,
                                      "address": listener.address, "num_running": 0,
                                      "num_waiting": 0, "signature": ""}).signed(secret)
            admin.set(keys.worker(worker_id), planted.to_json(), px=120_000)
            admin.sadd(keys.workers, worker_id)
        assert _log_has(router, "ignoring registry entry 'evil-unsigned'")
        assert _log_has(router, "ignoring registry entry 'evil-forged'")

        client = openai.OpenAI(base_url=f"{router.url}/v1", api_key="victim-key",
                               max_retries=0)
        for i in range(6):
            r = client.chat.completions.create(
                model=model, max_tokens=4, temperature=0,
                messages=[{"role": "user", "content": f"Victim {i}: my password is hunter{i}"}])
            assert r.choices[0].finish_reason in ("stop", "length")
        assert listener.connections == 0
        view = httpx.get(f"{router.url}/v1/cluster", timeout=10,
                         headers={"Authorization": "Bearer victim-key"}).json()
        assert {w["worker_id"] for w in view["workers"]} == {prefill.worker_id,
                                                            decode.worker_id}
    finally:
        listener.close()
        admin = redis_server.client()
        for worker_id in ("evil-unsigned", "evil-forged"):
            admin.delete(keys.worker(worker_id))
            admin.srem(keys.workers, worker_id)


def test_the_control_hash_is_written_only_by_the_admin(tmp_path):
    """`pdserve scale`'s channel: only the launcher's admin user writes it, and a size that
    makes no sense is ignored even from there."""
    from deploy.local_cluster import ClusterSpec, LocalCluster, desired_from_control

    cluster = LocalCluster(ClusterSpec(log_dir=tmp_path, redis_prefix=PREFIX),
                           log=lambda *a: None)
    cluster.start_redis()
    try:
        control = cluster.keys.control()
        anonymous = redis.Redis.from_url(cluster.redis_url, protocol=2)
        with pytest.raises(redis.exceptions.RedisError):
            anonymous.hset(control, "desired_decode", 50)
        for role in (WORKER, ROUTER):  # even a component of the cluster may not
            with pytest.raises(redis.exceptions.NoPermissionError):
                redis.Redis.from_url(url_for_role(cluster.redis_url, cluster.secret, role)
                                     ).hset(control, "desired_decode", 50)
        assert cluster.desired_sizes() == {}
        cluster.publish_desired(1, 2)
        assert cluster.desired_sizes() == {"prefill": 1, "decode": 2}
        admin = redis.Redis.from_url(url_for_role(cluster.redis_url, cluster.secret, ADMIN))
        admin.hset(control, mapping={"desired_decode": 10_000, "desired_prefill": "x"})
        assert cluster.desired_sizes() == {}
        assert desired_from_control({b"desired_decode": b"0"}, log=lambda *a: None) == {}
    finally:
        cluster.stop()
    assert cluster.secret_file.stat().st_mode & 0o777 == 0o600


def test_the_session_secret_is_what_the_cluster_uses(cluster):
    """Guards the fixtures themselves: the tests above prove nothing unless the workers run
    with the secret (an --insecure worker logs that it is open)."""
    prefill, decode, _, _ = cluster
    assert len(cluster_secret().value) >= 16
    for worker in (prefill, decode):
        assert not any("no cluster secret" in line for line in worker.log_lines)
