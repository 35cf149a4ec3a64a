"""The CPU-side parts of benchmarks/serving_overhead_gpu.py: arguments, prompts, TPOT, the
summary rows and table, the process-tree CPU reader and the streaming client (against a tiny
chunked SSE server). The GPU run itself is the lead's (tests never time anything)."""

import asyncio
import json
import os

from benchmarks import serving_overhead_gpu as so


def test_defaults_dry_run_and_out(monkeypatch, tmp_path):
    monkeypatch.delenv("OUT", raising=False)
    args = so.parse_args([])
    assert (args.model, args.concurrency, args.output_tokens) == (
        "random:llama-3.1-8b", [32, 64, 128], 512)
    assert args.max_num_seqs == 128 and args.out.name == "serving_overhead_gpu.json"
    monkeypatch.setenv("OUT", str(tmp_path))
    dry = so.parse_args(["--dry-run"])
    assert (dry.model, dry.device, dry.concurrency) == ("demo", "cpu", [2, 4])
    assert dry.out == tmp_path / "serving_overhead_dry.json" and dry.max_num_seqs == 4


def test_prompts_are_distinct_per_wave_and_reproducible():
    a = so.draw_prompts([2, 3], 5, 100)
    assert [len(a[2]), len(a[3])] == [2, 3] and all(len(p) == 5 for p in a[3])
    assert a == so.draw_prompts([2, 3], 5, 100) and a[2] != a[3][:2]
    assert all(10 <= t < 100 for p in a[3] for t in p)


def test_tpot_and_summary_rows_and_table():
    assert so.tpot_s(1.0, 2.0, 11) == 0.1 and so.tpot_s(1.0, 1.0, 1) is None
    engine = {32: {"tpot_p50_s": 0.010, "decode_step_s": 0.0098}}
    served = {32: {"tpot_p50_s": 0.0105, "ttft_p50_s": 0.05, "ok": 32,
                   "router_cpu_us_per_token": 40.0, "router_cores": 0.3,
                   "worker_cpu_us_per_token": 90.0}}
    (row,) = so.summary_rows(engine, served)
    assert abs(row["tpot_ratio"] - 1.05) < 1e-9 and row["within_target"]
    assert abs(row["served_tpot_p50_ms"] - 10.5) < 1e-9
    served[32]["tpot_p50_s"] = 0.012
    assert not so.summary_rows(engine, served)[0]["within_target"]
    (cells,) = so.table_rows(so.summary_rows(engine, served))
    assert len(cells) == len(so.HEADERS) and cells[-1] == "32/32"
    json.dumps(so.summary_rows(engine, served))  # what main saves


def test_tree_cpu_counts_this_process():
    spent = so.tree_cpu_s(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert so.tree_cpu_s(os.getpid()) > spent


def test_stream_client_reads_chunk_times_and_usage():
    events = [{"choices": [{"text": "a"}]}, {"choices": [{"text": "b"}]},
              {"choices": [{"text": "c"}]}, {"choices": [], "usage": {"completion_tokens": 3}}]

    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for e in events:
            data = b"data: " + json.dumps(e).encode() + b"\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.01)
        done = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await so.stream_one(port, "m", [1, 2], 3)

    got = asyncio.run(main())
    assert got["status"] == 200 and got["tokens"] == 3
    assert got["tpot_s"] > 0 and got["ttft_s"] > 0
