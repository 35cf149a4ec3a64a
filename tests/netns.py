"""Simulated hosts for multi-host tests: Linux network namespaces on one bridge.

``NetnsHosts(3)`` makes three namespaces, each with loopback up and one veth into a private
bridge, each its own address on a private /24; the root namespace gets the bridge's address
(.254), so the test process itself can reach every host (it plays the client). Names carry a
random tag (interface names are capped at 15 characters), so parallel runs do not collide;
``close()`` removes everything and is safe to call twice (use it as a context manager, so a
failing test tears down too). ``require_netns()`` skips a test cleanly with the reason when
this machine cannot make namespaces (not root, no ``ip``, a sandbox that refuses).

Same kernel, so not everything is like separate machines: the namespaces share the file
system and /dev/shm, so UCX would reach a peer "host" through shared memory unless told to use
TCP. The workers tell it so themselves (a worker advertising a non-loopback address uses TCP
on that address's interface: ``NixlSettings.for_device``), which is also what real separate
hosts need, where shm is unreachable anyway.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None if they can (tries one for real)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` binary (iproute2)"
    probe = f"pdprobe{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as e:
        return f"`ip netns add` failed: {e}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def require_netns() -> None:
    import pytest

    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"multi-host simulation unavailable: {reason}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no interface here uses (parallel runs pick different ones)."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    for _ in range(100):
        prefix = f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(254) + 1}"
        if f" {prefix}." not in used:  # `ip -o addr` lists "inet 10.x.y.z/24"
            return ipaddress.IPv4Network(f"{prefix}.0/24")
    raise RuntimeError("no free private /24 found")


@dataclass(frozen=True)
class Host:
    """One simulated host: a namespace, its address, and the root-side end of its link."""

    netns: str
    ip: str
    link: str  # the veth end in the root namespace: cut it, read its counters

    def cmd(self, *argv: str) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def counter(self, name: str) -> int:
        """A statistic of this host's link as the bridge sees it: ``rx_bytes`` is what the host
        sent, ``tx_bytes`` what it received."""
        return int(Path(f"/sys/class/net/{self.link}/statistics/{name}").read_text())

    def set_link(self, up: bool) -> None:
        """Cut (or restore) this host's only network link, as a pulled cable would."""
        _ip("link", "set", self.link, "up" if up else "down")

    def netem(self, spec: str | None) -> None:
        """``tc netem`` on the host's outgoing side (e.g. ``"delay 1ms"``); None removes it.
        Applied inside the namespace, so it shapes what this host sends."""
        base = ["tc", "qdisc", "del" if spec is None else "replace", "dev", "eth0", "root"]
        argv = self.cmd(*base, *([] if spec is None else ["netem", *spec.split()]))
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode and spec is not None:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


class NetnsHosts:
    def __init__(self, count: int):
        self.tag = secrets.token_hex(3)
        self.bridge = f"pdbr{self.tag}"
        self.subnet = _free_subnet()
        addrs = list(self.subnet.hosts())
        self.root_ip = str(addrs[-1])  # .254: the root namespace, where the test runs
        self.hosts: list[Host] = []
        self._netns: list[str] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.root_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(count):
                self.hosts.append(self._add_host(i, str(addrs[i])))
        except Exception:
            self.close()
            raise

    def _add_host(self, i: int, ip: str) -> Host:
        ns, link, inner = f"pd{self.tag}h{i}", f"pd{self.tag}v{i}", f"pd{self.tag}i{i}"
        _ip("netns", "add", ns)
        self._netns.append(ns)
        _ip("link", "add", link, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", inner, "name", "eth0", netns=ns)
        _ip("addr", "add", f"{ip}/24", "dev", "eth0", netns=ns)
        _ip("link", "set", "eth0", "up", netns=ns)
        _ip("link", "set", "lo", "up", netns=ns)
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        return Host(ns, ip, link)

    def close(self) -> None:
        """Remove the namespaces (their veth pairs go with them) and the bridge. Processes
        still running inside a namespace keep it alive, unnamed: stop them first."""
        for ns in self._netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._netns.clear()
        for host in self.hosts:  # a veth whose namespace was already gone
            subprocess.run(["ip", "link", "del", host.link], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def __enter__(self) -> NetnsHosts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
