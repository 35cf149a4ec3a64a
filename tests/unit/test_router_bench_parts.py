"""The pure parts of benchmarks/router_bench.py: its workload, its HTTP load generator (against
a real asyncio server on a real socket), its CPU accounting over a real process tree, and the
ratios it prints. No timing is asserted: only that what it counts is what happened."""

import asyncio
import json
import subprocess
import sys
import textwrap

import psutil

from benchmarks import process_cpu as pc
from benchmarks import router_workload as wl
from benchmarks.router_bench import median_rows, ratio_rows, spread_rows


def test_bodies_have_the_issue_shape():
    bodies = wl.chat_bodies("demo", count=64)
    sizes = [len(json.dumps(b)) for b in bodies]
    assert all(2050 <= s <= 2150 for s in sizes), sizes
    systems = [b["messages"][0]["content"] for b in bodies]
    assert len(set(systems)) == wl.NUM_SYSTEM_PROMPTS
    prefix = systems[0][:wl.SHARED_PREFIX_CHARS]
    assert all(s.startswith(prefix) for s in systems)
    # ... and no longer common prefix: the 16 tails differ right after it.
    assert len({s[wl.SHARED_PREFIX_CHARS:wl.SHARED_PREFIX_CHARS + 20] for s in systems}) == 16
    assert len({b["messages"][1]["content"] for b in bodies}) == 64
    assert all(b["stream"] and b["max_tokens"] == 16 and b["model"] == "demo" for b in bodies)
    assert wl.chat_bodies("demo", count=64) == bodies  # deterministic across runs and trees


def sse(events: int, usage: bool = False) -> bytes:
    lines = [b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'] * events
    if usage:
        lines.append(b'data: {"choices": [], "usage": {"prompt_tokens": 9, '
                     b'"completion_tokens": 16}}\n\n')
    return b"".join(lines) + b"data: [DONE]\n\n"


def chunked(payload: bytes, piece: int = 37) -> bytes:
    out = b""
    for i in range(0, len(payload), piece):
        part = payload[i:i + piece]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


def feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_read_response_dechunks_and_counts_sse_events():
    body = sse(17, usage=True)

    async def go():
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: x\r\n\r\n"
        reader = feed(head + chunked(body) + b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy")
        first = await wl.read_response(reader)
        second = await wl.read_response(reader)  # the same keep-alive connection
        return first, second

    (status, headers, got), (status2, _, got2) = asyncio.run(go())
    assert (status, got) == (200, body) and headers["content-type"] == "x"
    assert (status2, got2) == (503, b"busy")
    assert wl.sse_events(got) == (18, True)
    assert wl.sse_events(b'data: {"x": 1}\n\n') == (1, False)  # cut short: no [DONE]
    assert wl.usage_of(got) == {"prompt_tokens": 9, "completion_tokens": 16}


def test_encode_request_is_valid_http_with_the_body_length():
    raw = wl.encode_request("127.0.0.1", 8000, "/v1/chat/completions", {"a": "é"})
    head, payload = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Content-Length: {len(payload)}".encode() in head
    assert json.loads(payload) == {"a": "é"}


def test_run_load_counts_streams_errors_and_stops_at_its_bound():
    """A real server: every 3rd request gets 503; the rest stream 16 events and [DONE]."""
    seen = []

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                seen.append(json.loads(await reader.readexactly(length))["n"])
                if len(seen) % 3 == 0:
                    writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + chunked(sse(16)))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def go():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        requests = [wl.encode_request("127.0.0.1", port, "/x", {"n": n}) for n in range(5)]
        async with server:
            return await wl.run_load("127.0.0.1", port, requests, concurrency=4,
                                     max_requests=30, duration_s=60)

    result = asyncio.run(go())
    assert len(seen) == 30 and sorted(set(seen)) == [0, 1, 2, 3, 4]
    assert result.ok == 20 and result.errors == {"503": 10}
    assert result.events == 20 * 16 and len(result.latencies_s) == 20


def test_proc_stat_steal_and_busy():
    before = pc.parse_proc_stat("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3 4\n")
    after = pc.parse_proc_stat("cpu  200 0 100 1000 10 0 0 90\nintr 1\n")
    # deltas: user 100, system 50, idle 200, steal 50 of 400 jiffies
    assert pc.steal_fraction(before, after) == 50 / 400
    assert pc.busy_fraction(before, after) == 200 / 400
    old_kernel = pc.parse_proc_stat("cpu 1 2 3 4\n")  # no steal column: 0
    assert old_kernel["steal"] == 0
    assert pc.steal_fraction(None, after) is None


BURNER = textwrap.dedent("""
    import os, subprocess, sys, time
    if sys.argv[1] == "child":
        start = sum(os.times()[:2])
        sys.stdin.readline()  # burn only inside the test's window
        while sum(os.times()[:2]) - start < 0.4:  # burn 0.4 s of CPU, then idle
            pass
        print("burnt", flush=True)
        time.sleep(60)
    else:
        child = subprocess.Popen([sys.executable, __file__, "child"], stdout=subprocess.PIPE,
                                 text=True)
        print(child.pid, flush=True)
        print(child.stdout.readline().strip(), flush=True)
        time.sleep(60)
""")


def test_tree_cpu_sums_a_parent_and_its_children(tmp_path):
    script = tmp_path / "burner.py"
    script.write_text(BURNER)
    parent = subprocess.Popen([sys.executable, str(script), "parent"], stdout=subprocess.PIPE,
                              stdin=subprocess.PIPE, text=True)  # the child inherits stdin
    try:
        child_pid = int(parent.stdout.readline())
        assert sorted(pc.tree_pids(parent.pid)) == sorted([parent.pid, child_pid])
        tree = pc.TreeCpu([parent.pid]).start()
        parent_before = pc.sample_pids([parent.pid])[parent.pid]
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "burnt"
        tree.stop()
        parent_alone = pc.sample_pids([parent.pid])[parent.pid] - parent_before
        assert tree.processes == 2 and tree.lost == 0
        assert tree.seconds >= 0.3  # the child's burn, seen through the parent's tree
        assert parent_alone < 0.2
        snap = pc.snapshot_all()
        others = pc.top_others({}, snap, exclude=set(snap) - {child_pid})
        assert [o["pid"] for o in others] == [child_pid]
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()


def row(label, procs, cpu1, cpu_n, added, rate):
    return {"tree": label, "label": label, "router_processes": procs, "added_p50_ms": added,
            "serial": {"router_cpu_us_per_request": cpu1},
            "loaded": {"router_cpu_us_per_request": cpu_n, "req_per_s": rate}}


def test_ratios_are_against_the_first_tree_and_one_process():
    rows = [row("new", 1, 500, 400, 1.0, 1000), row("old", 1, 5000, 4000, 4.0, 100),
            row("new", 2, 600, 450, 1.1, 1800)]
    got = {(r[0], r[1], r[2]): r[3:] for r in ratio_rows(rows)}
    assert got == {("old", 1, "vs new"): ["10.00x", "10.00x", "4.00x", "0.10x"],
                   ("new", 2, "vs 1 proc"): ["1.20x", "1.12x", "1.10x", "1.80x"]}


def test_repeats_are_summarized_by_medians_and_ranges():
    runs = [row("new", 1, c1, cn, added, rate) for c1, cn, added, rate in
            ((500, 400, 1.0, 1000), (700, 380, 1.4, 1200), (520, 900, 0.9, 1100))]
    for r, errors in zip(runs, ({"503": 1}, {}, {"503": 2, "timeout": 1}), strict=True):
        r["loaded"]["errors"] = errors
    runs.append(row("old", 1, 5000, 4000, 4.0, 100))
    medians = median_rows(runs)
    assert [(m["label"], m["repeats"]) for m in medians] == [("new", 3), ("old", 1)]
    new = medians[0]
    assert new["serial"]["router_cpu_us_per_request"] == 520
    assert new["loaded"]["router_cpu_us_per_request"] == 400
    assert new["loaded"]["req_per_s"] == 1100
    assert new["added_p50_ms"] == 1.0
    assert new["loaded"]["errors"] == {"503": 3, "timeout": 1}
    assert new["spread"]["CPU/req @N"] == (380, 900)
    assert spread_rows(medians)[0] == ["new", 1, 3, "500-700", "380-900", "0.90-1.40", "1000-1200"]
    assert {(r[0], r[2]): r[3:] for r in ratio_rows(medians)} == {
        ("old", "vs new"): ["9.62x", "10.00x", "4.00x", "0.09x"]}
