"""Which address of this machine others can reach, and which interface holds it.

A worker bound to all interfaces must still put one address in the registry (for gRPC) and in
its KV agent's metadata (for UCX). The right one is the address of the interface that routes to
the peers it already knows (Redis, the router): they share its network, and in a container or a
multi-homed host the hostname may resolve to something else. With every peer on loopback the
cluster is local, and loopback stays the answer.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to loopback (``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def route_source_ip(peer_host: str) -> str | None:
    """The local address the kernel would send from to reach ``peer_host`` (a UDP connect
    sends nothing; it only selects the route), or None when there is no route."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(peer_host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return s.getsockname()[0]
    except OSError:
        return None


def advertise_host(bind_host: str, peer_hosts: list[str]) -> str:
    """The address to advertise for a server bound to ``bind_host``.

    A specific bind address is the only one the server answers on: that. Bound to all
    interfaces: the address routing to the first non-loopback peer; with only loopback peers,
    loopback (everything is local); with no route at all, the hostname (the old default,
    which container networks resolve)."""
    if bind_host not in WILDCARD_HOSTS:
        return bind_host
    remote = [h for h in peer_hosts if h and not is_loopback(h)]
    if peer_hosts and not remote:
        return "127.0.0.1"
    for peer in remote:
        ip = route_source_ip(peer)
        if ip and not ipaddress.ip_address(ip).is_loopback:
            return ip
    return socket.gethostname()


def interface_of(host: str) -> str | None:
    """The name of the local interface holding ``host``'s IPv4 address (``eth0``), or None
    when no interface here holds it (a name that resolves elsewhere, NAT, not Linux)."""
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on it
                continue
            if socket.inet_ntoa(packed[20:24]) == ip:
                return name
    return None
