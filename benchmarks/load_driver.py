"""Drives an OpenAI-compatible endpoint with streaming requests and records their timings.

Arrivals: open-loop Poisson at a request rate, a fixed concurrency (closed loop), or a trace's
timestamps. Multi-turn sessions send turn t+1 only after turn t has finished (if its Poisson
arrival comes first, it waits), as a real user would.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

import httpx

from benchmarks.serving_metrics import RequestRecord
from benchmarks.workloads import BenchRequest, Workload


@dataclass(frozen=True)
class DriveSpec:
    url: str  # base URL of the OpenAI API, e.g. http://127.0.0.1:8000/v1
    model: str
    rate: float | None = None  # requests per second (Poisson); None: use concurrency
    concurrency: int = 8
    duration_s: float | None = None  # stop issuing new requests after this long
    num_requests: int | None = None
    seed: int = 0
    timeout_s: float = 600.0
    api_key: str | None = None


async def send(client: httpx.AsyncClient, spec: DriveSpec, req: BenchRequest) -> RequestRecord:
    record = RequestRecord(time.perf_counter(), len(req.prompt), req.max_tokens)
    body = {"model": spec.model, "prompt": req.prompt, "max_tokens": req.max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}
    try:
        async with client.stream("POST", "/completions", json=body) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    record.error = str(event["error"].get("message"))
                    break
                if event.get("choices"):
                    record.chunk_times.append(time.perf_counter())
                    record.chunk_tokens.append(1)
                if event.get("usage"):
                    usage = event["usage"]
                    record.output_tokens = usage["completion_tokens"]
                    details = usage.get("prompt_tokens_details") or {}
                    record.cached_tokens = details.get("cached_tokens") or 0
        record.done_at = time.perf_counter()
        if record.output_tokens == 0:
            record.output_tokens = len(record.chunk_times)
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        record.error = f"{type(e).__name__}: {e}"
    return record


async def drive(workload: Workload, spec: DriveSpec, on_done=lambda record: None
                ) -> tuple[list[RequestRecord], float]:
    """Run the workload; return the records and the wall time from first send to last reply."""
    sessions = list(workload.sessions)
    limit = spec.num_requests or workload.num_requests
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    records: list[RequestRecord] = []
    started = time.perf_counter()
    deadline = started + spec.duration_s if spec.duration_s else None
    issued = 0

    def may_issue() -> bool:
        return issued < limit and (deadline is None or time.perf_counter() < deadline)

    async with httpx.AsyncClient(base_url=spec.url, timeout=spec.timeout_s, limits=limits,
                                 headers=headers) as client:
        async def run_session(session: list[BenchRequest], arrivals: list[float] | None):
            nonlocal issued
            for turn, req in enumerate(session):
                if arrivals is not None:
                    if spec.duration_s is not None and arrivals[turn] >= spec.duration_s:
                        return  # arrives after the window: never sleep until then
                    delay = arrivals[turn] - (time.perf_counter() - started)
                    if delay > 0:
                        await asyncio.sleep(delay)
                if not may_issue():
                    return
                issued += 1
                record = await send(client, spec, req)
                records.append(record)
                on_done(record)

        if sessions and sessions[0][0].at_s is not None:  # trace replay
            await asyncio.gather(*(run_session(s, [r.at_s for r in s]) for s in sessions))
        elif spec.rate:
            # One Poisson process for the whole workload; its k-th arrival goes to turn
            # k // S of session k % S, so conversations interleave as users' turns would.
            rng = random.Random(spec.seed)
            arrivals = [[0.0] * len(s) for s in sessions]
            slots = sorted(((t, i) for i, s in enumerate(sessions) for t in range(len(s))))
            clock = 0.0
            for turn, index in slots:
                clock += rng.expovariate(spec.rate)
                arrivals[index][turn] = clock
            await asyncio.gather(*(run_session(s, a) for s, a in zip(sessions, arrivals,
                                                                     strict=True)))
        else:
            queue = list(reversed(sessions))

            async def user():
                while queue and may_issue():
                    await run_session(queue.pop(), None)

            await asyncio.gather(*(user() for _ in range(spec.concurrency)))
    # Up to the last reply: rates are per second of load, not of waiting on arrivals that a
    # duration limit cancelled.
    finished = [r.done_at for r in records if r.done_at is not None]
    return records, (max(finished) if finished else time.perf_counter()) - started
