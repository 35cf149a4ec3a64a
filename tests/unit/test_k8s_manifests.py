"""The Kubernetes manifests (deploy/k8s/) checked offline: every object validates strictly
against the Kubernetes OpenAPI schemas bundled in ``kubernetes-validate`` (no cluster, no
network), every container's arguments parse with pdserve's real CLI, and the pieces refer to
each other correctly (selectors, Secret keys, probes, scrape ports, the kustomization)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="pip install kubernetes-validate")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest release still supported upstream and the newest the package bundles.
VERSIONS = ("1.31.0", "1.37.0")


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(version):
    docs = manifests()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "Secret", "ConfigMap"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {e.message}")


def test_the_validator_catches_a_broken_manifest():
    deployment = copy.deepcopy(by_kind("Deployment")["pdserve-decode"])
    containers(deployment)[0]["readinessProbe"]["periodSecond"] = 5  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(by_kind("Deployment")["pdserve-decode"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_container_arguments_parse_with_the_real_cli():
    from deploy.cli import build_parser

    parser = build_parser()
    for name, deployment in by_kind("Deployment").items():
        if name == "pdserve-redis":
            continue
        args = [a.replace("$(POD_IP)", "10.0.0.7") for a in containers(deployment)[0]["args"]]
        parsed = parser.parse_args(args)  # exits (fails the test) on an unknown flag
        assert parsed.host == "0.0.0.0"
        assert parsed.redis == "redis://pdserve-redis:6379/0"
        if name != "pdserve-router":
            assert parsed.command == name.removeprefix("pdserve-")
            assert parsed.advertise_host == "10.0.0.7"  # the pod IP, from the downward API


def test_selectors_secrets_probes_and_scrape_ports_fit_together():
    deployments, services = by_kind("Deployment"), by_kind("Service")
    secret_keys = {k for s in by_kind("Secret").values() for k in s["stringData"]}
    for service in services.values():
        selected = [d for d in deployments.values() if service["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, service["metadata"]["name"]
    for name, deployment in deployments.items():
        assert deployment["spec"]["selector"]["matchLabels"].items() <= \
            deployment["spec"]["template"]["metadata"]["labels"].items()
        container = containers(deployment)[0]
        assert "readinessProbe" in container, name
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["key"] in secret_keys, (name, ref)
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if name != "pdserve-redis":
            ports = {p["containerPort"] for p in container["ports"]}
            assert int(annotations["prometheus.io/port"]) in ports, name
    router = containers(deployments["pdserve-router"])[0]
    assert router["readinessProbe"]["httpGet"]["path"] == "/ready"
    for role in ("prefill", "decode"):
        probe = containers(deployments[f"pdserve-{role}"])[0]["readinessProbe"]["exec"]
        module = probe["command"][probe["command"].index("-m") + 1]
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
        assert probe["command"][-1].endswith(":50051")


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
