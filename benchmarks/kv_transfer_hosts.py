"""KV pulls between simulated hosts (network namespaces, tests/netns.py) beside the same host.

One request's KV (``--tokens`` tokens in 16-token blocks, consecutive block ids as fresh pools
hand them out) is pulled through ``NixlConnector`` from an owner process to a receiver process,
in each placement:

- same host: both in this namespace, UCX over shared memory (the CPU default);
- veth: owner and receiver in two namespaces on a kernel bridge, UCX over TCP (what a worker
  advertising a non-loopback address uses, ``NixlSettings.for_device``);
- delay D: the same over a user-space link that holds the owner's frames for D (0, 0.1, 1,
  10 ms; this kernel has no ``tc netem``, see tests/netns_delay.py). Its 0 ms row is that
  link's own ceiling (a Python forwarder), to read the delays against.

Beside each TCP row, the link's ceiling: one plain TCP stream of the same bytes between the
same two processes' namespaces (``raw TCP``). The owner polls its connector every
``--owner-poll-ms`` while it holds the blocks, as an engine does (20 ms: its wait between polls
with leases held): over TCP the owner's UCX worker must make progress for a READ to move.

The pull's share of the wait before decoding starts is ``pull / (prefill + pull)``, with the
prefill of the same prompt timed here on the demo model (CPU). pdserve streams the first token
when prefill ends, so the pull does not delay TTFT itself: it delays the second token (the
share is of "time to the second token"; it is what TTFT would be in a design that decodes
the first token).

    sudo python -m benchmarks.kv_transfer_hosts [--tokens 1024] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import pickle
import select
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import machine_info, print_table, save_json

DELAYS_MS = (0.0, 0.1, 1.0, 10.0)


# -- the two peers: processes driven over pipes, each in its own namespace ----------------------
def _send(stream, obj) -> None:
    blob = pickle.dumps(obj)
    stream.write(struct.pack("<I", len(blob)) + blob)
    stream.flush()


def _recv(stream):
    head = stream.read(4)
    if len(head) < 4:
        raise EOFError("peer exited")
    return pickle.loads(stream.read(struct.unpack("<I", head)[0]))


def _peer(role: str, shape_index: int, advertise: str | None, poll_s: float) -> None:
    """Owner: hold a filled KV region, answer ``describe``. Receiver: ``pull`` handles."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything UCX or NIXL prints goes to stderr, not into the pipe
    import torch

    from benchmarks.kv_transfer_bench import SHAPES, compat_of, layout_of, make_buffer
    from kv_transfer.nixl_connector import NixlConnector, NixlSettings

    shape = SHAPES[shape_index]
    buf = make_buffer(shape, "cpu", fill=role == "owner")
    settings = NixlSettings.for_device(torch.device("cpu"), advertise, pull_timeout_s=120.0)
    conn = NixlConnector(f"hosts-{role}", 0, 1, buf, layout_of(shape), compat_of(shape), settings)
    _send(out, {"ucx_tls": os.environ.get("UCX_TLS"),
                "ucx_net_devices": os.environ.get("UCX_NET_DEVICES")})
    stdin = sys.stdin.buffer
    while True:
        # Between commands the owner polls its connector as an engine holding leases does
        # (every ``poll_s``): over TCP the owner's UCX worker must make progress for a READ
        # to move (shared memory and RDMA need nothing from it).
        while role == "owner" and not select.select([stdin], [], [], poll_s)[0]:
            conn.collect_ended_leases()
        cmd, args = _recv(stdin)
        if cmd == "stop":
            conn.close()
            return
        if cmd == "describe":
            rid, blocks, num_tokens = args
            _send(out, conn.describe(rid, blocks, num_tokens, 600.0))
        elif cmd == "pull":
            handle, src, dst = args
            started = time.perf_counter()
            conn.start_pull(handle.request_id, handle, src, dst)
            done = []
            while not done:
                done = conn.poll_pulls()
            _send(out, (done[0].ok, done[0].error, done[0].num_bytes,
                        time.perf_counter() - started))


class _Peer:
    def __init__(self, role: str, shape_index: int, advertise: str | None,
                 prefix: list[str], poll_s: float = 0.02):
        cmd = [*prefix, sys.executable, "-m", "benchmarks.kv_transfer_hosts", "--peer", role,
               "--shape", str(shape_index), "--owner-poll-ms", str(poll_s * 1e3)]
        cmd += ["--advertise", advertise] if advertise else []
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        self.transport = _recv(self.process.stdout)

    def call(self, cmd: str, *args):
        _send(self.process.stdin, (cmd, args))
        return _recv(self.process.stdout)

    def stop(self) -> None:
        try:
            _send(self.process.stdin, ("stop", ()))
            self.process.wait(timeout=20)
        except Exception:
            self.process.kill()
            self.process.wait()


def measure(shape_index: int, tokens: int, repeats: int, owner_at: tuple[str | None, list],
            receiver_at: tuple[str | None, list], owner_poll_s: float) -> dict:
    from benchmarks.kv_transfer_bench import BLOCK_SIZE, REGION_BLOCKS

    num_blocks = tokens // BLOCK_SIZE
    assert 40 + num_blocks <= REGION_BLOCKS, f"at most {(REGION_BLOCKS - 40) * BLOCK_SIZE} tokens"
    owner = _Peer("owner", shape_index, *owner_at, poll_s=owner_poll_s)
    receiver = None
    try:
        receiver = _Peer("receiver", shape_index, *receiver_at)
        src, dst = list(range(7, 7 + num_blocks)), list(range(40, 40 + num_blocks))
        seconds, nbytes = [], 0
        for i in range(repeats + 1):
            handle = owner.call("describe", f"r{i}", src, tokens)
            ok, error, nbytes, elapsed = receiver.call("pull", handle, src, dst)
            assert ok, error
            if i:  # the first pull also connects and prepares descriptor lists
                seconds.append(elapsed)
        return {"bytes": nbytes, "pull_s": statistics.median(seconds), "samples_s": seconds,
                "owner_transport": owner.transport, "receiver_transport": receiver.transport}
    finally:
        owner.stop()
        if receiver is not None:
            receiver.stop()


_SINK = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0)); s.listen(1); print(s.getsockname()[1], flush=True)
for _ in range(int(sys.argv[2])):
    c, _ = s.accept(); n = 0
    while (chunk := c.recv(1 << 20)):
        n += len(chunk)
    c.sendall(b"k"); c.close()
"""
_SOURCE = """
import socket, sys, time
host, port, nbytes, times = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
blob = b"x" * nbytes
for _ in range(times):
    c = socket.create_connection((host, port)); t = time.perf_counter()
    c.sendall(blob); c.shutdown(socket.SHUT_WR); c.recv(1)
    print(time.perf_counter() - t, flush=True); c.close()
"""


def raw_tcp_seconds(nbytes: int, repeats: int, owner_at, receiver_at) -> float:
    """The link's ceiling for the same bytes: one plain TCP stream, owner to receiver."""
    (_, owner_prefix), (receiver_ip, receiver_prefix) = owner_at, receiver_at
    sink = subprocess.Popen([*receiver_prefix, sys.executable, "-c", _SINK, receiver_ip,
                             str(repeats + 1)], stdout=subprocess.PIPE, text=True)
    try:
        port = sink.stdout.readline().strip()
        out = subprocess.run([*owner_prefix, sys.executable, "-c", _SOURCE, receiver_ip, port,
                              str(nbytes), str(repeats + 1)], capture_output=True, text=True,
                             timeout=300, check=True).stdout.split()
        return statistics.median(float(x) for x in out[1:])
    finally:
        sink.kill()
        sink.wait()


def prefill_seconds(tokens: int, repeats: int) -> float:
    """Median prefill of a fresh ``tokens``-token prompt on the demo model, this CPU."""
    import random

    from engine import LLM, SamplingParams

    rng = random.Random(0)
    times = []
    with LLM("demo", device="cpu") as llm:
        for i in range(repeats + 1):
            ids = [rng.randrange(100, 40000) for _ in range(tokens)]  # nothing cached
            started = time.perf_counter()
            llm.generate(ids, SamplingParams(temperature=0, max_tokens=1))
            if i:
                times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    from benchmarks.kv_transfer_bench import SHAPES
    from tests.netns import NetnsHosts, netns_unavailable_reason
    from tests.netns_delay import DelayLink

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1024, help="prompt tokens (KV size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--delays-ms", type=float, nargs="+", default=list(DELAYS_MS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kv_transfer_hosts.json"))
    parser.add_argument("--owner-poll-ms", type=float, nargs="+", default=[20.0],
                        help="how often the owner polls its connector while holding KV "
                             "(20: the engine's idle poll with leases held; 0: spin)")
    parser.add_argument("--peer", choices=["owner", "receiver"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--advertise", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return _peer(args.peer, args.shape, args.advertise, args.owner_poll_ms[0] / 1e3)
    reason = netns_unavailable_reason()
    if reason:
        sys.exit(f"cannot simulate hosts here: {reason}")
    prefill_s = prefill_seconds(args.tokens, 3)
    results = []
    with NetnsHosts(2) as net:
        owner_host, receiver_host = net.hosts
        third = int(net.subnet.network_address.exploded.split(".")[2])
        tap_prefix = ".".join(net.subnet.network_address.exploded.split(".")[:2]) + \
            f".{third % 250 + 1}"
        for index, shape in enumerate(SHAPES):
            placements = [("same host (shm)", None, (None, []), (None, [])),
                          ("veth (TCP)", None, (owner_host.ip, owner_host.cmd()),
                           (receiver_host.ip, receiver_host.cmd()))]
            placements += [(f"delay {d:g} ms (TCP)", d, None, None) for d in args.delays_ms]
            for name, delay_ms, owner_at, receiver_at in placements:
                polls = args.owner_poll_ms if name != "same host (shm)" else [20.0]
                for poll_ms in polls:
                    link = None
                    if delay_ms is not None:
                        link = DelayLink(owner_host, receiver_host, tap_prefix, delay_ms / 1e3)
                        owner_at = (link.ip_a, owner_host.cmd())
                        receiver_at = (link.ip_b, receiver_host.cmd())
                    try:
                        r = measure(index, args.tokens, args.repeats, owner_at, receiver_at,
                                    poll_ms / 1e3)
                        r["raw_tcp_s"] = (raw_tcp_seconds(r["bytes"], args.repeats, owner_at,
                                                          receiver_at)
                                          if owner_at[0] else float("nan"))
                    finally:
                        if link is not None:
                            link.close()
                    r.update(shape=shape.name, placement=name, delay_ms=delay_ms,
                             owner_poll_ms=poll_ms)
                    if index == 0:  # the demo model: its prefill was timed here
                        r["prefill_s"] = prefill_s
                        r["pull_share"] = r["pull_s"] / (prefill_s + r["pull_s"])
                    results.append(r)
                    print(f"  {shape.name}, {name}, owner polls every {poll_ms:g} ms: "
                          f"{r['pull_s'] * 1e3:.1f} ms", flush=True)
    same = {r["shape"]: r["pull_s"] for r in results if r["placement"].startswith("same")}
    rows = [[r["shape"], r["placement"], r["owner_poll_ms"], f"{r['bytes'] / 2**20:.1f} MiB",
             r["pull_s"] * 1e3,
             r["bytes"] / r["pull_s"] / 1e9, r["bytes"] / r["raw_tcp_s"] / 1e9,
             r["raw_tcp_s"] / r["pull_s"], r["pull_s"] / same[r["shape"]],
             f"{r['pull_share'] * 100:.1f} %" if "pull_share" in r else "-"]
            for r in results]
    print(f"KV of one {args.tokens}-token request between simulated hosts (CPU); demo prefill "
          f"of the same prompt here: {prefill_s * 1e3:.0f} ms")
    table = print_table(["shape", "placement", "owner poll ms", "bytes", "pull ms", "GB/s",
                         "raw TCP GB/s", "pdserve / raw TCP", "x same host",
                         "pull share before decode"], rows)
    save_json(args.out, {"tokens": args.tokens, "prefill_s_demo_cpu": prefill_s,
                         "results": results, "table": table, "machine": machine_info()})


if __name__ == "__main__":
    main()
