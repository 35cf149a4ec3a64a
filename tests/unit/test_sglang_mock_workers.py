"""benchmarks/sglang_mock_workers.py, the instant SGLang servers router_peer puts behind
sglang-router: a real server on a real socket, read with the load generator's own HTTP code.
sglang-router itself is not needed (it is no dependency of this project)."""

import asyncio

import orjson

from benchmarks import router_workload as wl
from benchmarks import sglang_mock_workers as mock


def body(**extra) -> dict:
    return {**wl.chat_bodies("demo", count=1)[0], **extra}


async def exchange(role: str, requests: list[tuple[str, dict | None]]):
    """Each (path, JSON body or None for a GET) on one keep-alive connection, in order."""
    server = mock.Server(role, "demo", 0)
    listener = await asyncio.get_running_loop().create_server(
        lambda: mock.Connection(server), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        for path, payload in requests:
            if payload is None:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            else:
                writer.write(wl.encode_request("127.0.0.1", port, path, payload))
            replies.append(await asyncio.wait_for(wl.read_response(reader), 5))
    finally:
        writer.close()
        listener.close()
    return replies


def test_decode_streams_16_chunks_then_usage_then_done_on_a_kept_connection():
    with_usage = body(stream_options={"include_usage": True})
    replies = asyncio.run(exchange("decode", [("/v1/chat/completions", b) for b in
                                              (body(), with_usage, body(max_tokens=3))]))
    (s1, h1, b1), (s2, _, b2), (_, _, b3) = replies
    assert s1 == s2 == 200 and h1["transfer-encoding"] == "chunked"
    assert h1["content-type"] == "text/event-stream"
    assert wl.sse_events(b1) == (16, True) and wl.usage_of(b1) is None
    assert wl.sse_events(b2) == (17, True)  # 16 tokens + the usage event
    assert wl.usage_of(b2)["completion_tokens"] == 16
    assert wl.sse_events(b3) == (3, True)  # max_tokens honoured
    events = [orjson.loads(line[6:]) for line in b1.split(b"\n")
              if line.startswith(b"data: {")]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * 15 + ["length"]


def test_prefill_answers_one_token_and_the_router_startup_paths():
    replies = asyncio.run(exchange("prefill", [
        ("/health", None), ("/server_info", None), ("/model_info", None),
        ("/v1/chat/completions", body(bootstrap_host="127.0.0.1", bootstrap_port=9,
                                      bootstrap_room=5)),
        ("/v1/chat/completions", body(stream=False)), ("/nope", None), ("/_mock/paths", None)]))
    statuses = [r[0] for r in replies]
    assert statuses == [200, 200, 200, 200, 200, 404, 200]
    assert orjson.loads(replies[1][2])["disaggregation_mode"] == "prefill"
    assert wl.sse_events(replies[3][2]) == (1, True)
    assert orjson.loads(replies[4][2])["usage"]["completion_tokens"] == 1
    seen = orjson.loads(replies[6][2])
    assert seen["paths"]["POST /v1/chat/completions"] == 2 and seen["paths"]["GET /nope"] == 1
    assert seen["first_generation"]["bootstrap_room"] == 5  # the first streamed request


def test_steps_are_whole_chunks():
    steps = mock.stream_steps("/v1/chat/completions", body(), 4, 100)
    assert len(steps) == 4 and steps[-1].endswith(mock.DONE + b"\r\n" + mock.LAST_CHUNK)
    for step in steps:  # every step parses as complete chunks: a reader can stop after any
        rest = step
        while rest and rest != mock.LAST_CHUNK:
            size, _, rest = rest.partition(b"\r\n")
            assert rest[int(size, 16):int(size, 16) + 2] == b"\r\n"
            rest = rest[int(size, 16) + 2:]
