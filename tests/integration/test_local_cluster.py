"""`pdserve up` as users run it: serve, scale under load, shut down leaving nothing behind."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.cluster_helpers import ROOT, free_port

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")
psutil = pytest.importorskip("psutil")


def test_up_scale_under_load_and_clean_shutdown(demo_model_dir, tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PDSERVE_CACHE_DIR=str(tmp_path / "cache"))
    base = [sys.executable, "-m", "deploy.cli"]
    launcher = subprocess.Popen(
        base + ["up", "--model", str(demo_model_dir), "--port", str(port), "--no-smoke",
                "--log-dir", str(tmp_path / "logs")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.time() + 300
        for line in launcher.stdout:
            lines.append(line)
            if "cluster ready" in line or time.time() > deadline:
                break
        assert any("cluster ready" in x for x in lines), "".join(lines)
        threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True).start()

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0, timeout=120)
        name = client.models.list().data[0].id
        results, errors = [], []

        def user(n):
            for i in range(n):
                try:
                    r = client.chat.completions.create(
                        model=name, temperature=0, max_tokens=24,
                        messages=[{"role": "user", "content": f"Say a word about the number {i}."}])
                    results.append(r.choices[0].message.content)
                except Exception as e:  # a failed request fails the test below
                    errors.append(repr(e))

        users = [threading.Thread(target=user, args=(5,)) for _ in range(4)]  # 20 requests
        for u in users:
            u.start()
        for sizes in (["prefill=2", "decode=2"], ["prefill=1", "decode=1"]):
            scale = subprocess.run(base + ["scale", *sizes, "--timeout", "240"], cwd=ROOT,
                                   env=env, capture_output=True, text=True, timeout=300)
            assert scale.returncode == 0, scale.stdout + scale.stderr
        for u in users:
            u.join(timeout=300)
        assert errors == [] and len(results) == 20
        assert all(r.strip() for r in results)
        status = subprocess.run(base + ["status"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
        assert status.returncode == 0 and "prefill 1, decode 1" in status.stdout
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 4  # redis, router, two workers
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            launcher.wait(timeout=120)
        except subprocess.TimeoutExpired:
            launcher.kill()
            raise
    time.sleep(0.5)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left behind: {alive}\n{''.join(lines[-30:])}"
    assert launcher.returncode == 0, "".join(lines[-30:])
