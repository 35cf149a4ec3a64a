"""The router benchmark's workload and its load generator (issue 16).

Workload: streaming chat completions of 16 output tokens, each body ~2,100 bytes, its system
prompt one of 16 that share a 1,500-character prefix (so the router tokenizes and templates a
realistic prompt, and its block hashes share a prefix). Bodies are built and encoded as whole
HTTP requests before the clock starts, so the generator spends its CPU on the socket only.

The load generator is a minimal HTTP/1.1 keep-alive client over asyncio streams: httpx costs
about as much CPU per streamed request as the router it measures, and on 2 shared cores that
would cap the rate it can show. It reads ``Content-Length`` and chunked bodies and counts SSE
``data:`` events; it is a measuring tool, not a general client.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

NUM_SYSTEM_PROMPTS = 16
SHARED_PREFIX_CHARS = 1500
TARGET_BODY_BYTES = 2100
OUTPUT_TOKENS = 16
_WORDS = ("the request router cluster decode prefill token stream cache block worker model "
          "latency answer question policy customer order shipping invoice account support "
          "billing product refund priority summary detail polite concise accurate always "
          "never include explain format step context reply language").split()


def _text(rng: random.Random, chars: int) -> str:
    """English-like filler of exactly ``chars`` characters (tokenizes like prose, ~4 c/token)."""
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


def chat_bodies(model: str, count: int = 256, seed: int = 0,
                max_tokens: int = OUTPUT_TOKENS) -> list[dict]:
    """``count`` distinct chat requests: system prompt ``i % 16`` (the shared 1,500-character
    prefix plus its own tail), a user turn of its own, sized so each JSON body is about
    TARGET_BODY_BYTES."""
    rng = random.Random(seed)
    prefix = "You are the support assistant of a shipping company. " + _text(
        rng, SHARED_PREFIX_CHARS - 54)
    tails = [f" Persona {i}: " + _text(random.Random(seed * 1000 + i), 240)
             for i in range(NUM_SYSTEM_PROMPTS)]
    bodies = []
    for n in range(count):
        system = prefix + tails[n % NUM_SYSTEM_PROMPTS]
        body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": f"Question {n}: "}]}
        room = TARGET_BODY_BYTES - len(json.dumps(body))
        body["messages"][1]["content"] += _text(random.Random(seed + 7 * n + 1), max(room, 0))
        bodies.append(body)
    return bodies


def encode_request(host: str, port: int, path: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and lower-cased headers of a response head (through the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off a keep-alive connection: status, headers, the whole (de-chunked) body."""
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then blank
                    pass
                break
            parts.append((await reader.readexactly(size + 2))[:-2])
        return status, headers, b"".join(parts)
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length)


def sse_events(body: bytes) -> tuple[int, bool]:
    """Count of SSE data events other than ``[DONE]``, and whether ``[DONE]`` closed it."""
    events = [line for line in body.split(b"\n") if line.startswith(b"data:")]
    done = bool(events) and events[-1].strip() == b"data: [DONE]"
    return len(events) - done, done


def usage_of(body: bytes) -> dict | None:
    """The ``usage`` object of a streamed reply (sent with stream_options.include_usage)."""
    for line in body.split(b"\n"):
        if line.startswith(b"data: {") and b'"usage"' in line:
            usage = json.loads(line[6:]).get("usage")
            if usage:
                return usage
    return None


def run_async(coro):
    """Run the load generator's loop: uvloop where installed (less of the shared cores spent
    measuring), else asyncio's. ``loop_kind()`` says which, for the results."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def loop_kind() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)  # requests that streamed to [DONE]
    events: int = 0  # SSE data events of those requests
    errors: dict[str, int] = field(default_factory=dict)  # status or exception -> count
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    def error_count(self) -> int:
        return sum(self.errors.values())


async def run_load(host: str, port: int, requests: list[bytes], concurrency: int,
                   max_requests: int, duration_s: float) -> LoadResult:
    """``concurrency`` clients, each on its own keep-alive connection, sending the next body
    as soon as its previous reply ends, until ``max_requests`` were sent or ``duration_s``
    passed (whichever first)."""
    result = LoadResult()
    sent = 0
    started = time.perf_counter()
    stop_at = started + duration_s

    def fail(kind: str) -> None:
        result.errors[kind] = result.errors.get(kind, 0) + 1

    async def client() -> None:
        nonlocal sent
        reader = writer = None
        while sent < max_requests and time.perf_counter() < stop_at:
            raw = requests[sent % len(requests)]
            sent += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t0 = time.perf_counter()
                writer.write(raw)
                status, headers, body = await read_response(reader)
                elapsed = time.perf_counter() - t0
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                fail(type(exc).__name__)
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
                continue
            events, done = sse_events(body)
            if status == 200 and done:
                result.latencies_s.append(elapsed)
                result.events += events
            else:
                fail(str(status))
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    return result
