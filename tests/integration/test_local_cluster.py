"""`pdserve up` as users run it: serve, scale under load, shut down leaving nothing behind."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cluster_helpers import ROOT, free_port

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")
psutil = pytest.importorskip("psutil")


def test_up_scale_under_load_and_clean_shutdown(demo_model_dir, tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", PDSERVE_CACHE_DIR=str(tmp_path / "cache"))
    base = [sys.executable, "-m", "deploy.cli"]
    repo_logs_before = _listing(ROOT / "pdserve-logs")
    launcher = subprocess.Popen(  # no --log-dir: the default must stay out of the checkout
        base + ["up", "--model", str(demo_model_dir), "--port", str(port), "--no-smoke"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.time() + 300
        for line in launcher.stdout:
            lines.append(line)
            if "cluster ready" in line or time.time() > deadline:
                break
        assert any("cluster ready" in x for x in lines), "".join(lines)
        # What the launcher says it started: a redis-server child, or fakeredis in its own
        # process (no child) when the machine has no redis-server.
        redis_url, redis_kind = _said(lines, r"\[pdserve\] redis: (\S+) \((.+)\)$")
        (log_dir,) = _said(lines, r"\[pdserve\] logs: (.+)/$")
        expected = {"router": 1, "prefill": 1, "decode": 1,
                    "redis-server": int(redis_kind == "redis-server")}
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
        # Scaled-down workers drain and exit on their own: wait for them, then the children
        # must be exactly what a 1/1 cluster on this Redis needs.
        deadline = time.time() + 120
        while (roles := _roles(launcher.pid)) != expected and time.time() < deadline:
            time.sleep(0.5)
        assert roles == expected, "".join(lines[-30:])
        children = psutil.Process(launcher.pid).children(recursive=True)
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
    host, redis_port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    with pytest.raises(ConnectionRefusedError):  # no Redis (child or embedded) still serving
        socket.create_connection((host, int(redis_port)), timeout=5).close()
    # Logs went under the cache dir ($PDSERVE_CACHE_DIR here), not into the checkout.
    assert Path(log_dir).parent == tmp_path / "cache" / "logs"
    assert {"router.log", "prefill-1.log", "decode-1.log"} <= _listing(Path(log_dir))
    assert _listing(ROOT / "pdserve-logs") == repo_logs_before


def _said(lines: list[str], pattern: str) -> tuple[str, ...]:
    """The groups of the launcher's first line matching ``pattern``."""
    for line in lines:
        if match := re.search(pattern, line.rstrip("\n")):
            return match.groups()
    raise AssertionError(f"the launcher never said {pattern!r}:\n{''.join(lines)}")


def _roles(pid: int) -> dict[str, int]:
    """Live children of the launcher by what they run: redis-server, or a `pdserve ROLE`."""
    roles = {"router": 0, "prefill": 0, "decode": 0, "redis-server": 0}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = child.cmdline()
            name = child.name()
        except psutil.NoSuchProcess:
            continue
        if "redis-server" in name or any("redis-server" in c for c in cmd[:1]):
            role = "redis-server"
        elif "deploy.cli" in cmd:
            role = cmd[cmd.index("deploy.cli") + 1]
        else:
            role = " ".join(cmd)  # anything else is unexpected and shows in the diff
        roles[role] = roles.get(role, 0) + 1
    return roles


def _listing(path: Path) -> set[str]:
    return set(os.listdir(path)) if path.is_dir() else set()
