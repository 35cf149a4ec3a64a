"""A point-to-point link with a fixed one-way delay between two simulated hosts, in user space.

``tc netem`` is what one would use, but this VM's kernel has no sch_netem (nor fq or etf, which
could delay by departure time): only tbf, htb, pfifo and clsact. So the link is two TAP devices,
one moved into each namespace, and a forwarder here in the root namespace that copies Ethernet
frames between them, holding those from ``a`` to ``b`` for ``delay_s`` (as netem on ``a``'s
egress would: the round trip grows by ``delay_s``; ``b``'s frames, the ACKs of a KV pull, pass
at once). The forwarder is Python, so the link has a ceiling of its own: measure it at
``delay_s=0`` beside the delays (a 64 KB MTU keeps frames few).
"""

from __future__ import annotations

import collections
import fcntl
import os
import secrets
import select
import struct
import threading
import time

from tests.netns import Host, _ip

_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI = 0x0002, 0x1000
MTU_BYTES = 65000


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
    return fd


class DelayLink:
    """``a`` and ``b`` get a second interface each (``.ip_a`` / ``.ip_b`` on a /24 of their
    own); traffic between those addresses crosses the forwarder."""

    def __init__(self, a: Host, b: Host, subnet_prefix: str, delay_s: float = 0.0):
        tag = secrets.token_hex(3)
        self.names = (f"pdt{tag}a", f"pdt{tag}b")
        self.ip_a, self.ip_b = f"{subnet_prefix}.1", f"{subnet_prefix}.2"
        self.delay_s = delay_s
        self._fds = [_open_tap(n) for n in self.names]  # the devices live while these do
        self._stop = False
        for name, host, ip in zip(self.names, (a, b), (self.ip_a, self.ip_b), strict=True):
            _ip("link", "set", name, "netns", host.netns)
            _ip("link", "set", name, "mtu", str(MTU_BYTES), netns=host.netns)
            _ip("addr", "add", f"{ip}/24", "dev", name, netns=host.netns)
            _ip("link", "set", name, "up", netns=host.netns)
        self.device_a, self.device_b = self.names
        self._threads = [threading.Thread(target=self._pump, args=(0, 1, True), daemon=True),
                         threading.Thread(target=self._pump, args=(1, 0, False), daemon=True)]
        for t in list(self._threads):  # the delayed pump adds its releaser to the list
            t.start()

    def _pump(self, src: int, dst: int, delayed: bool) -> None:
        """Copy frames from tap ``src`` to tap ``dst``; delayed ones via a timed queue."""
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()
        if delayed:
            releaser = threading.Thread(target=self._release, args=(queue, ready, dst),
                                        daemon=True)
            releaser.start()
            self._threads.append(releaser)
        while not self._stop:
            # Polled, so close() can stop the threads before it closes their descriptors
            # (a closed number may be reused at once by someone else's file).
            if not select.select([self._fds[src]], [], [], 0.2)[0]:
                continue
            try:
                frame = os.read(self._fds[src], MTU_BYTES + 64)
            except OSError:
                return
            if not delayed or self.delay_s <= 0:
                self._write(dst, frame)
                continue
            with ready:
                queue.append((time.perf_counter() + self.delay_s, frame))
                ready.notify()

    def _release(self, queue, ready, dst: int) -> None:
        while not self._stop:
            with ready:
                while not queue and not self._stop:
                    ready.wait(0.5)
                if not queue:
                    continue
                due, frame = queue[0]
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            with ready:
                queue.popleft()
            self._write(dst, frame)

    def _write(self, dst: int, frame: bytes) -> None:
        try:
            os.write(self._fds[dst], frame)
        except OSError:  # the peer's device is down or gone: a lost frame, as on a wire
            pass

    def close(self) -> None:
        self._stop = True
        for t in list(self._threads):
            t.join(timeout=5)
        for fd in self._fds:
            os.close(fd)  # removes the devices, whichever namespace they are in
        self._fds = []
