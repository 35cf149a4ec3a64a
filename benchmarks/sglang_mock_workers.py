"""Instant mock SGLang HTTP workers, for measuring sglang-router alone (issue 16's peer).

One process per role, as real SGLang servers are::

    python -m benchmarks.sglang_mock_workers --role prefill|decode --port N [--model demo]

It prints ``SGLANG_MOCK_READY role=R port=N`` once it listens. It answers what sglang-router
asks of an SGLang server, at startup and per request in PD mode: health (``/health``,
``/health_generate``), server and model info, ``/v1/models``, ``/get_load``, and the
generation routes (``/v1/chat/completions``, ``/v1/completions``, ``/generate``), which the
router sends to both servers at once with ``bootstrap_host/port/room`` injected. The decode
mock streams ``max_tokens`` (16 in the workload) tokens as SSE events, one token per event-loop
iteration to every stream in flight, like benchmarks/mock_workers.py's decode "steps" (so the
router reads one event per step, not a whole reply in one segment). The prefill mock answers
as a real prefill server does: a one-token reply, which the router does not forward.

Raw asyncio Protocol + httptools (uvloop where installed), chunks built once per request: the
mocks share the cores with the load generator, so they must cost little. ``GET /_mock/paths``
returns every (method, path) seen and the first streamed generation request's fields.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import httptools
import orjson

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/generate")
DEFAULT_TOKENS = 16
CHARS_PER_TOKEN = 4  # no tokenizer here: usage's prompt_tokens is an estimate from characters
_ids = itertools.count()


def chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def sse(obj: dict | str) -> bytes:
    return b"data: " + (obj.encode() if isinstance(obj, str) else orjson.dumps(obj)) + b"\n\n"


LAST_CHUNK = b"0\r\n\r\n"
DONE = sse("[DONE]")


def prompt_tokens_of(path: str, req: dict) -> int:
    if path == "/generate" and isinstance(req.get("input_ids"), list):
        return len(req["input_ids"])
    if path == "/v1/chat/completions":
        text = "".join(m.get("content") or "" for m in req.get("messages", [])
                       if isinstance(m.get("content"), str))
    else:
        text = req.get("text") or req.get("prompt") or ""
    return max(1, len(text if isinstance(text, str) else "".join(text)) // CHARS_PER_TOKEN)


def max_tokens_of(path: str, req: dict) -> int:
    if path == "/generate":
        return int((req.get("sampling_params") or {}).get("max_new_tokens") or DEFAULT_TOKENS)
    return int(req.get("max_completion_tokens") or req.get("max_tokens") or DEFAULT_TOKENS)


def stream_steps(path: str, req: dict, tokens: int, prompt_tokens: int) -> list[bytes]:
    """The chunked body of a streamed reply, one element per step: one token each; the last
    step also carries the usage event (when asked), ``[DONE]`` and the closing chunk."""
    rid, model, created = f"mock-{next(_ids)}", req.get("model", "mock"), int(time.time())
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
             "total_tokens": prompt_tokens + tokens}
    include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
    if path == "/generate":  # SGLang's native stream: cumulative text, meta_info
        steps = [sse({"text": "a" * (i + 1), "output_ids": [7] * (i + 1), "meta_info": {
            "id": rid, "prompt_tokens": prompt_tokens, "completion_tokens": i + 1,
            "cached_tokens": 0, "finish_reason": {"type": "length", "length": tokens}
            if i + 1 == tokens else None}}) for i in range(tokens)]
        tail = b""
    else:
        chat = path == "/v1/chat/completions"
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created, "model": model}

        def event(finish: str | None, first: bool = False) -> bytes:
            choice = ({"index": 0, "delta": {"role": "assistant", "content": "a"} if first
                       else {"content": "a"}} if chat else {"index": 0, "text": "a"})
            return sse({**head, "choices": [{**choice, "logprobs": None,
                                             "finish_reason": finish}]})

        middle = event(None)  # identical for every middle token: built once
        steps = [event(None, first=True), *([middle] * max(tokens - 2, 0)), event("length")]
        steps = steps[:1] if tokens == 1 else steps
        tail = sse({**head, "choices": [], "usage": usage}) if include_usage else b""
    framed = [chunk(s) for s in steps]
    framed[-1] += (chunk(tail) if tail else b"") + chunk(DONE) + LAST_CHUNK
    return framed


def whole_reply(path: str, req: dict, tokens: int, prompt_tokens: int) -> dict:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
             "total_tokens": prompt_tokens + tokens}
    rid, text = f"mock-{next(_ids)}", "a" * tokens
    if path == "/generate":
        return {"text": text, "output_ids": [7] * tokens, "meta_info": {
            "id": rid, "prompt_tokens": prompt_tokens, "completion_tokens": tokens,
            "cached_tokens": 0, "finish_reason": {"type": "length", "length": tokens}}}
    chat = path == "/v1/chat/completions"
    choice = ({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": req.get("model", "mock"),
            "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": "length"}],
            "usage": usage}


class TokenClock:
    """The decode "steps": each event-loop iteration, one token to every stream in flight
    (so requests arriving meanwhile join the next step, as on a real decode batch)."""

    def __init__(self) -> None:
        self.streams: list[Connection] = []
        self.scheduled = False

    def add(self, conn: Connection) -> None:
        self.streams.append(conn)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.step)

    def step(self) -> None:
        # call_soon from inside a callback runs on the next iteration, after I/O: one step each.
        # A stream that ends may start its connection's next request, which joins the new list.
        streams, self.streams = self.streams, []
        for conn in streams:
            if conn.advance():
                self.streams.append(conn)
        self.scheduled = bool(self.streams)
        if self.scheduled:
            asyncio.get_running_loop().call_soon(self.step)


class Server:
    """What both roles share: the info they report and what the router asked for."""

    def __init__(self, role: str, model: str, port: int) -> None:
        self.role, self.model, self.port = role, model, port
        self.clock = TokenClock()
        self.paths: dict[str, int] = {}
        self.first_generation: dict | None = None
        server_info = {"model_path": model, "tokenizer_path": model, "served_model_name": model,
                       "is_generation": True, "model_type": "llama",
                       "architectures": ["LlamaForCausalLM"], "tp_size": 1, "dp_size": 1,
                       "load_balance_method": "round_robin", "disaggregation_mode": role,
                       "max_batch_size": 1024, "max_prefill_tokens": 16384,
                       "max_running_requests": 1024, "max_num_reqs": 1024,
                       "max_total_num_tokens": 1 << 20, "version": "mock",
                       "internal_states": [{"last_gen_throughput": 0.0}]}
        models = {"object": "list", "data": [{"id": model, "object": "model", "created": 0,
                                              "owned_by": "sglang", "root": model}]}
        self.info: dict[str, bytes] = {p: orjson.dumps(server_info) for p in (
            "/get_server_info", "/server_info")}
        self.info.update({p: orjson.dumps({k: server_info[k] for k in (
            "model_path", "tokenizer_path", "is_generation", "model_type", "architectures")})
            for p in ("/get_model_info", "/model_info")})
        self.info["/v1/models"] = orjson.dumps(models)
        self.info["/get_load"] = orjson.dumps([{"dp_rank": 0, "num_reqs": 0,
                                                "num_waiting_reqs": 0, "num_tokens": 0}])

    def seen(self, method: str, path: str, req: dict | None) -> None:
        key = f"{method} {path}"
        self.paths[key] = self.paths.get(key, 0) + 1
        # The first streamed request (the router's readiness checks are not streamed).
        if req is not None and (self.first_generation is None or (
                req.get("stream") and not self.first_generation["stream"])):
            self.first_generation = {"path": path, "keys": sorted(req), **{
                k: req.get(k) for k in ("bootstrap_host", "bootstrap_port", "bootstrap_room",
                                        "stream", "stream_options", "max_tokens")}}


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests answered in order (no interleaving)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.pending: list[tuple[str, str, bytes, bool]] = []
        self.steps: list[bytes] = []
        self.step_index = 0
        self.keep_alive = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.reply(400, b"bad request", "text/plain", keep_alive=False)

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        request = (self.parser.get_method().decode(), self.url.split(b"?")[0].decode(),
                   b"".join(self.body), self.parser.should_keep_alive())
        self.url, self.body = b"", []
        self.pending.append(request)
        if not self.steps:
            self.next_request()

    def next_request(self) -> None:
        while self.pending and not self.steps and not self.transport.is_closing():
            self.handle(*self.pending.pop(0))

    def handle(self, method: str, path: str, raw: bytes, keep_alive: bool) -> None:
        s = self.server
        self.keep_alive = keep_alive
        if method == "POST" and path in GENERATION_PATHS:
            try:
                req = orjson.loads(raw)
                assert isinstance(req, dict)
            except (orjson.JSONDecodeError, AssertionError):
                s.seen(method, path, None)
                return self.reply(400, b'{"error":"body is not a JSON object"}')
            s.seen(method, path, req)
            prompt_tokens = prompt_tokens_of(path, req)
            tokens = 1 if s.role == "prefill" else max_tokens_of(path, req)
            if not req.get("stream"):
                return self.reply(200, orjson.dumps(whole_reply(path, req, tokens, prompt_tokens)))
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                                 + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n")
            self.steps, self.step_index = stream_steps(path, req, tokens, prompt_tokens), 0
            return s.clock.add(self)
        s.seen(method, path, None)
        if path == "/_mock/paths":
            return self.reply(200, orjson.dumps({"role": s.role, "paths": s.paths,
                                                 "first_generation": s.first_generation}))
        if path in s.info:
            return self.reply(200, s.info[path])
        if path in ("/health", "/health_generate", "/liveness", "/readiness", "/flush_cache"):
            return self.reply(200, b"", "text/plain")
        self.reply(404, b'{"error":"not served by the mock"}')

    def advance(self) -> bool:
        """One step of this connection's stream; False once it ended (or the peer left)."""
        if self.transport.is_closing():
            self.steps = []
            return False
        self.transport.write(self.steps[self.step_index])
        self.step_index += 1
        if self.step_index < len(self.steps):
            return True
        self.steps = []
        if not self.keep_alive:
            self.transport.close()
        else:
            self.next_request()
        return False

    def reply(self, status: int, body: bytes, content_type: str = "application/json",
              keep_alive: bool | None = None) -> None:
        keep_alive = self.keep_alive if keep_alive is None else keep_alive
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}[status]
        close = "" if keep_alive else "Connection: close\r\n"
        self.transport.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                             f"Content-Length: {len(body)}\r\n{close}\r\n".encode() + body)
        if not keep_alive:
            self.transport.close()


async def serve(role: str, host: str, port: int, model: str) -> None:
    loop = asyncio.get_running_loop()
    server = Server(role, model, port)
    listener = await loop.create_server(lambda: Connection(server), host, port, backlog=1024)
    server.port = listener.sockets[0].getsockname()[1]
    print(f"SGLANG_MOCK_READY role={role} port={server.port}", flush=True)
    await listener.serve_forever()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("prefill", "decode"), required=True)
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", default="demo", help="the model id the mock reports")
    args = p.parse_args(argv)
    from benchmarks.router_workload import run_async  # uvloop where installed

    run_async(serve(args.role, args.host, args.port, args.model))


if __name__ == "__main__":
    main()
