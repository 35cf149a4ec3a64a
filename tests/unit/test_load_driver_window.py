"""A duration limit ends an open-loop run at the window, against a real HTTP server: arrivals
scheduled past it are dropped, not waited for, and rates are per second of load."""

import asyncio
import json
import socket
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from benchmarks import workloads
from benchmarks.load_driver import DriveSpec, drive


async def completions(request):
    async def events():
        for _ in range(2):
            yield f"data: {json.dumps({'choices': [{'index': 0, 'text': 'x'}]})}\n\n"
        usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def serve() -> tuple[uvicorn.Server, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, port


def test_duration_ends_the_run_at_the_window():
    server, port = serve()
    try:
        # 400 requests at 40/s would span ~10 s; the window is 1 s.
        wl = workloads.random_lengths(400, input_mean=4, output_mean=2, vocab=1000, seed=0)
        spec = DriveSpec(url=f"http://127.0.0.1:{port}/v1", model="m", rate=40.0,
                         duration_s=1.0, seed=0)
        started = time.perf_counter()
        records, elapsed = asyncio.run(drive(wl, spec))
        wall = time.perf_counter() - started
    finally:
        server.should_exit = True
    assert all(r.ok for r in records)
    assert 15 <= len(records) <= 70  # Poisson count for 40/s over 1 s, with wide margin
    assert wall < 3.0, f"the driver waited {wall:.1f}s for arrivals past the window"
    assert elapsed <= 1.5
