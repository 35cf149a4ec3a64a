"""`pdserve ray up` on a Ray cluster of two nodes in two simulated hosts (network namespaces,
tests/netns.py): the head in host A offers the prefill pool's resource, a worker node joined
with `ray start --address` in host B offers the decode pool's. The prefill worker must land on
A and the decode worker on B, each advertising its own node's address; the official openai
client in the root namespace gets one engine's tokens, and the KV crosses A's link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import httpx
import pytest

from engine import LLM, SamplingParams
from tests.cluster_helpers import ROOT
from tests.netns import NetnsHosts, require_netns

pytest.importorskip("ray", reason="needs ray (pip install 'pdserve[ray]')")
pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")

GCS_PORT, ROUTER_PORT = 6379, 8000  # every namespace has all its ports free
PROMPT = ("Once upon a time, in a harbour town famous for its bakeries, a young apprentice "
          "named Mira discovered a map hidden inside a loaf of bread. ") * 5


@pytest.fixture
def ray_nodes(monkeypatch):
    """Host A runs the Ray head, host B a worker node; both stopped before the namespaces go."""
    require_netns()
    # Same kernel and /dev/shm for both "hosts": keep UCX off shared memory (see netns.py).
    for name in ("UCX_TLS", "UCX_NET_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_WAIT_POLICY="PASSIVE")
    # A short temp dir: Ray's unix socket paths are limited to 107 bytes.
    temps = [tempfile.mkdtemp(prefix="rayn", dir="/tmp")]
    with NetnsHosts(2) as net:
        a, b = net.hosts
        common = ["--num-cpus=2", "--disable-usage-stats", "--object-store-memory=100000000"]
        nodes = [(a, ["--head", f"--port={GCS_PORT}", "--include-dashboard=false",
                      f"--temp-dir={temps[0]}",
                      '--resources={"pdserve_prefill": 1, "pdserve_router": 1}']),
                 (b, [f"--address={a.ip}:{GCS_PORT}", '--resources={"pdserve_decode": 1}'])]
        try:
            for host, args in nodes:
                start = subprocess.run(host.cmd("ray", "start", f"--node-ip-address={host.ip}",
                                                *common, *args),
                                       env=env, capture_output=True, text=True, timeout=180)
                assert start.returncode == 0, start.stdout + start.stderr
            yield net, env
        finally:
            for host, _ in reversed(nodes):
                subprocess.run(host.cmd("ray", "stop", "--force"), env=env,
                               capture_output=True, timeout=120)


def pdserve_ray(host, env, *args, timeout=600):
    """`pdserve ray ...` as a driver on ``host`` (a Ray driver runs on a node of the cluster)."""
    return subprocess.run(host.cmd(sys.executable, "-m", "deploy.cli", "ray", *args,
                                   "--address", f"{host.ip}:{GCS_PORT}"),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_up_places_each_pool_on_its_node(ray_nodes, demo_model_dir):
    net, env = ray_nodes
    a, b = net.hosts
    # A pool resource no node offers is refused up front, naming it (nothing starts).
    wrong = pdserve_ray(a, env, "up", "--model", str(demo_model_dir), "--decode-resource",
                        "pdserve_gpu_nodes", timeout=180)
    assert wrong.returncode == 1 and "pdserve_gpu_nodes" in wrong.stderr, \
        wrong.stdout + wrong.stderr

    up = pdserve_ray(a, env, "up", "--model", str(demo_model_dir), "--port", str(ROUTER_PORT),
                     "--prefill-resource", "pdserve_prefill",
                     "--decode-resource", "pdserve_decode", "--router-resource", "pdserve_router",
                     "--worker-arg=--max-num-batched-tokens=64")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "(on a node offering 'pdserve_decode')" in up.stdout, up.stdout
        url = f"http://{a.ip}:{ROUTER_PORT}"
        workers = httpx.get(f"{url}/v1/cluster", timeout=10).json()["workers"]
        hosts = {w["role"]: w["address"].split(":")[0] for w in workers}
        assert hosts == {"prefill": a.ip, "decode": b.ip}, json.dumps(workers, indent=1)

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                               timeout=120)
        sent_before = net.hosts[0].counter("rx_bytes")
        out = client.completions.create(model=demo_model_dir.name, prompt=PROMPT,
                                        max_tokens=10, temperature=0,
                                        extra_body={"ignore_eos": True})
        with LLM(str(demo_model_dir), device="cpu") as llm:
            params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
            assert out.choices[0].text == llm.generate(PROMPT, params)[0].text
        # ~200 prompt tokens of KV (≈4.6 MB on the demo model) left host A over its link.
        sent = net.hosts[0].counter("rx_bytes") - sent_before
        assert sent > 4e6, f"host A sent only {sent} bytes: the KV did not cross the network"
    finally:
        down = pdserve_ray(a, env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
