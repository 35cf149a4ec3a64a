"""`pdserve ray` on a local Ray head (CPU): serve, scale both pools under load, tear down."""

import os
import subprocess
import sys
import tempfile
import threading

import pytest

from tests.cluster_helpers import ROOT, free_port

pytest.importorskip("ray", reason="needs ray (pip install 'pdserve[ray]')")
pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")


@pytest.fixture
def ray_head():
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    # A short temp dir: Ray's unix sockets live there and paths are limited to 107 bytes.
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    start = subprocess.run(["ray", "start", "--head", "--num-cpus=2", "--disable-usage-stats",
                            f"--temp-dir={temp}", "--include-dashboard=false"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stdout + start.stderr
    yield env
    subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def pdserve(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "deploy.cli", "ray", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_ray_up_scale_under_load_and_down(ray_head, demo_model_dir):
    port = free_port()
    up = pdserve(ray_head, "up", "--model", str(demo_model_dir), "--port", str(port),
                 "--advertise-host", "127.0.0.1")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0, timeout=120)
        name = client.models.list().data[0].id
        results, errors = [], []

        def user(n):
            for i in range(n):
                try:
                    r = client.completions.create(model=name, prompt=f"Count to {i}:",
                                                  max_tokens=16, temperature=0)
                    results.append(r.choices[0].text)
                except Exception as e:
                    errors.append(repr(e))

        users = [threading.Thread(target=user, args=(6,)) for _ in range(2)]
        for u in users:
            u.start()
        scale = pdserve(ray_head, "scale", "prefill=2", "decode=2")
        assert scale.returncode == 0, scale.stdout + scale.stderr
        for u in users:
            u.join(timeout=300)
        assert errors == [] and len(results) == 12
        status = pdserve(ray_head, "status")
        assert "pools: prefill 2, decode 2" in status.stdout, status.stdout + status.stderr
    finally:
        down = pdserve(ray_head, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "[pdserve] removed" in down.stdout.splitlines()[-1]
