"""router/joined_head.py: a response's head leaves in the same socket write as its first body
chunk, at once; on a quiet loop every other write goes out as it comes, on a busy pass (other
connections waiting for its end) they are joined per connection at its end; order is kept,
and nothing is lost at close. Through a real uvicorn server and a real HTTP client, a streamed
response and a keep-alive connection read as without it."""

import asyncio
import socket
import threading
import time

import httpx
import uvicorn

from router.joined_head import HeadJoiningHttpToolsProtocol, HeadJoiningTransport


class RecordingTransport(asyncio.Transport):
    """The real transport's side of the contract, recorded: each write, and the close."""

    def __init__(self):
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data):
        assert not self.closed
        self.writes.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_the_head_leaves_with_the_first_chunk_and_the_rest_at_once():
    async def main():
        real = RecordingTransport()
        t = HeadJoiningTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert real.writes == []  # held for the first chunk
        t.write(b"5\r\nhello\r\n")
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n"]  # not at the pass end
        t.write(b"3\r\nabc\r\n")
        t.write(b"0\r\n\r\n")
        assert real.writes[1:] == [b"3\r\nabc\r\n", b"0\r\n\r\n"]  # none held back
        await asyncio.sleep(0)  # the pass's end has nothing left to send
        assert len(real.writes) == 3
        t.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # the next response on the connection
        await asyncio.sleep(0)
        assert real.writes[3:] == [b"HTTP/1.1 204 No Content\r\n\r\n"]  # alone, at the pass end

    asyncio.run(main())


def test_on_a_busy_pass_writes_wait_for_its_end_joined_per_connection():
    async def main():
        loop = asyncio.get_running_loop()
        a_real, b_real = RecordingTransport(), RecordingTransport()
        a, b = HeadJoiningTransport(a_real, loop), HeadJoiningTransport(b_real, loop)
        a.write(b"HTTP/1.1 200 OK\r\n\r\n")  # a's head waits for the pass's end
        b.write(b"1\r\nx\r\n")  # another connection waits: b joins the pass
        b.write(b"1\r\ny\r\n")
        a.write(b"1\r\nz\r\n")
        assert a_real.writes == b_real.writes == []
        await asyncio.sleep(0)
        assert a_real.writes == [b"HTTP/1.1 200 OK\r\n\r\n1\r\nz\r\n"]
        assert b_real.writes == [b"1\r\nx\r\n1\r\ny\r\n"]
        b.write(b"0\r\n\r\n")  # the next pass is quiet again: at once
        assert b_real.writes[-1] == b"0\r\n\r\n"

    asyncio.run(main())


def test_a_closed_loop_leaves_nothing_behind():
    import gc

    from router import joined_head

    async def main():
        t = HeadJoiningTransport(RecordingTransport(), asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        await asyncio.sleep(0)

    before = len(joined_head._PASSES)
    asyncio.run(main())
    gc.collect()
    assert len(joined_head._PASSES) == before


def test_close_sends_a_held_head_first_and_a_gone_peer_gets_nothing():
    async def main():
        real = RecordingTransport()
        t = HeadJoiningTransport(real, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
        t.close()
        assert real.writes == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"] and real.closed
        gone = RecordingTransport()
        t2 = HeadJoiningTransport(gone, asyncio.get_running_loop())
        t2.write(b"HTTP/1.1 200 OK\r\n\r\n")
        gone.closed = True  # the peer hung up before the pass ended
        await asyncio.sleep(0)
        assert gone.writes == []
        assert t2.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the real one's

    asyncio.run(main())


async def _app(scope, receive, send):
    """Chunks sent in one pass, then across passes, then the last with the end."""
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    for i in range(3):
        await send({"type": "http.response.body", "body": b"a%d;" % i, "more_body": True})
    for i in range(3):
        await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b"b%d;" % i, "more_body": True})
    await send({"type": "http.response.body", "body": b"end", "more_body": False})


def test_real_server_streams_and_keeps_the_connection_alive():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=port, log_level="error",
                                           http=HeadJoiningHttpToolsProtocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(3):  # one connection, kept alive between the responses
                with client.stream("POST", "/", content=b"x") as r:
                    assert r.status_code == 200 and r.headers["content-type"] == "text/plain"
                    body = b"".join(r.iter_bytes())
                assert body == b"a0;a1;a2;b0;b1;b2;end"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
