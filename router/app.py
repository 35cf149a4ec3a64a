"""The FastAPI application: OpenAI routes, operator routes, and the background tasks that keep
the registry and the prefix index current."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.redis_schema import Keys
from common.sampling_params import SamplingParams
from router import openai_format as fmt
from router.body_limit import BodyLimitMiddleware
from router.config import RouterConfig
from router.dispatcher import (
    BadRequestError,
    Dispatcher,
    GenerateRequest,
    NoWorkersError,
    TokenEvent,
    UpstreamError,
)
from router.errors import APIError, bad_request, http_error, unavailable
from router.kv_event_consumer import KVEventConsumer
from router.load_tracker import LoadTracker
from router.metrics import RouterMetrics
from router.model_info import ModelInfo
from router.openai_schema import ChatCompletionRequest, CompletionRequest
from router.prefix_index import PrefixIndex
from router.readiness import readiness
from router.registry import RegistryView
from router.request_validation import refuse_unsupported, validation_error
from router.streaming import ClosingStreamingResponse
from router.worker_clients import WorkerClients

log = logging.getLogger(__name__)


class RouterState:
    """Everything a request handler needs, built once per app."""

    def __init__(self, config: RouterConfig):
        import redis.asyncio as aioredis

        self.config = config
        self.model = ModelInfo.load(config)
        self.redis = aioredis.from_url(config.redis_url, socket_timeout=2.0,
                                       socket_connect_timeout=2.0)
        self.keys = Keys(config.redis_prefix)
        self.index = PrefixIndex()
        self.metrics = RouterMetrics()
        self.load = LoadTracker()
        self.clients = WorkerClients()
        self.consumer: KVEventConsumer | None = None

        def on_leave(worker_id: str) -> None:
            self.consumer.forget(worker_id)
            self.load.forget(worker_id)

        self.registry = RegistryView(self.redis, self.keys, on_leave=on_leave)
        self.consumer = KVEventConsumer(self.redis, self.keys, self.index, self.registry)
        self.dispatcher = Dispatcher(config, self.registry, self.index, self.clients,
                                     self.metrics, self.load)

    def max_model_len(self) -> int | None:
        if self.config.max_model_len:
            return self.config.max_model_len
        lens = [r.max_model_len for r in self.registry.live("decode") if r.max_model_len]
        return min(lens) if lens else None


def create_app(config: RouterConfig) -> FastAPI:
    state = RouterState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.registry.refresh()
        tasks = [asyncio.create_task(state.registry.run(), name="registry"),
                 asyncio.create_task(state.consumer.run(), name="kv-events")]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await state.clients.close()
        await state.redis.aclose()

    app = FastAPI(title="pdserve router", lifespan=lifespan,
                  description="OpenAI-compatible front door of a pdserve cluster")
    app.state.router = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        """Unknown paths (404), wrong methods (405), unparseable bodies: OpenAI's shape, not
        FastAPI's ``{"detail": ...}``."""
        where = f"{request.method} {request.url.path}"
        message = {404: f"Unknown request URL: {where}",
                   405: f"Method not allowed: {where}"}.get(exc.status_code, str(exc.detail))
        return http_error(exc.status_code, message, headers=exc.headers).response()

    def authorize(request: Request) -> None:
        if not config.requires_auth:
            return
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if key not in config.api_keys:
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")

    # -- OpenAI routes ------------------------------------------------------------------------
    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        created = int(state.model.created)
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "pdserve"}
            for name in state.model.names]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        state.model.check_name(body.model)
        refuse_unsupported(body, config.lenient)
        prompt = await state.model.encode_chat(
            [{"role": m.role, "content": m.text()} for m in body.messages], _limit(state))
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = _sampling(body, state, len(prompt), max_tokens,
                           logprobs=(body.top_logprobs or 0) if body.logprobs else None)
        req = GenerateRequest(f"chatcmpl-{uuid.uuid4().hex}", prompt, params,
                              (body.cache_salt,) if body.cache_salt else ())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _respond(state, request, req, body.model, body.stream, "chat",
                              include_usage, body.logprobs)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request):
        state.model.check_name(body.model)
        refuse_unsupported(body, config.lenient)
        prompt = await state.model.encode_prompt(body.prompt, _limit(state))
        params = _sampling(body, state, len(prompt), body.max_tokens, logprobs=body.logprobs)
        req = GenerateRequest(f"cmpl-{uuid.uuid4().hex}", prompt, params,
                              (body.cache_salt,) if body.cache_salt else ())
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _respond(state, request, req, body.model, body.stream, "completion",
                              include_usage, body.logprobs is not None)

    # -- operator routes ----------------------------------------------------------------------
    @app.get("/health")
    async def health():
        """Liveness: 200 while the process serves; whether it can answer is /ready."""
        ready = readiness(state.registry, state.max_model_len())
        return {"status": "ok", "ready": ready.ready, "redis": bool(state.registry.redis_ok),
                "prefill_workers": ready.prefill_workers,
                "decode_workers": ready.decode_workers}

    @app.get("/ready")
    async def ready():
        """Readiness: 200 once a request would be served, else 503 saying why."""
        r = readiness(state.registry, state.max_model_len())
        if not r.ready:
            return unavailable(r.reason, retry_after_s=2).response()
        return r.body()

    @app.get("/metrics")
    async def metrics():
        m = state.metrics
        m.index_blocks.set(state.index.num_blocks())
        for role in ("prefill", "decode"):
            m.workers.labels(role).set(len(state.registry.live(role)))
        return PlainTextResponse(generate_latest(m.registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/v1/cluster", dependencies=[Depends(authorize)])
    async def cluster():
        workers = []
        for r in state.registry.workers.values():
            workers.append({
                "worker_id": r.worker_id, "role": r.role, "address": r.address,
                "model": r.model, "tp_size": r.tp_size, "draining": r.draining,
                "fenced": state.registry.is_fenced(r.worker_id),
                "kv_usage": r.kv_usage, "num_blocks": r.num_blocks,
                "num_free_blocks": r.num_free_blocks, "queue_depth": r.num_waiting,
                "running": r.num_running, "held_leases": r.num_held_leases,
                "router_prefill_tokens": state.load.prefill_tokens.get(r.worker_id, 0),
                "router_decode_streams": state.load.decode_streams.get(r.worker_id, 0),
                "indexed_blocks": state.index.num_blocks(r.worker_id),
                "heartbeat_age_s": round(time.time() - r.heartbeat_at, 3),
            })
        d = state.dispatcher
        return {
            "policy": config.policy, "redis": bool(state.registry.redis_ok),
            "pools": {"prefill": len(state.registry.live("prefill")),
                      "decode": len(state.registry.live("decode"))},
            "workers": sorted(workers, key=lambda w: (w["role"], w["worker_id"])),
            "index": {"blocks": state.index.num_blocks(), "events": state.consumer.num_events,
                      "resyncs": state.consumer.num_resyncs,
                      "accuracy_exact_share": d.accuracy.exact_share,
                      "accuracy_verdict": d.accuracy.last_verdict},
            "prefix_hit_ratio": d.prefix_hit_ratio,
        }

    return app


def _limit(state: RouterState) -> int:
    limit = state.max_model_len()
    if limit is None:
        raise unavailable("no decode worker is available", retry_after_s=2)
    return limit


def _sampling(body, state: RouterState, prompt_len: int, max_tokens: int | None,
              logprobs: int | None) -> SamplingParams:
    limit = _limit(state)
    if max_tokens is None:  # the rest of the context, capped by --max-tokens-default
        max_tokens = limit - prompt_len
        if state.config.max_tokens_default > 0:
            max_tokens = min(max_tokens, state.config.max_tokens_default)
    if prompt_len + max_tokens > limit or max_tokens < 1:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
            f"completion). Please reduce the length of the prompt or completion.",
            param="max_tokens", code="context_length_exceeded")
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0, seed=body.seed, stop=tuple(body.stop_list()),
            ignore_eos=body.ignore_eos,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0, logprobs=logprobs)
    except ValueError as e:
        raise bad_request(str(e)) from None


async def _prime(agen: AsyncIterator[TokenEvent]) -> TokenEvent:
    """The first event, so failures before any output become proper HTTP statuses."""
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        raise APIError(502, "the workers returned no output", type_="server_error") from None
    except NoWorkersError as e:
        raise unavailable(str(e)) from None
    except BadRequestError as e:
        raise bad_request(str(e)) from None
    except UpstreamError as e:
        raise APIError(502, str(e), type_="server_error") from None


async def _respond(state: RouterState, request: Request, req: GenerateRequest, model: str,
                   stream: bool, kind: str, include_usage: bool, want_logprobs: bool):
    agen = state.dispatcher.generate(req)
    first = await _prime(agen)
    text_of = state.model.token_text
    if stream:
        body = _stream(agen, first, req, model, kind, include_usage, want_logprobs, text_of)
        return ClosingStreamingResponse(body, media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache"})
    task = asyncio.create_task(_collect(agen, first))
    while True:  # watch for a client that gives up, and cancel the work if it does
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if done:
            break
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return JSONResponse({"error": {"message": "client disconnected"}}, status_code=499)
    try:
        events = task.result()
    except UpstreamError as e:
        raise APIError(502, str(e), type_="server_error") from None
    except BadRequestError as e:
        raise bad_request(str(e)) from None
    text = "".join(e.text for e in events)
    tokens = sum(len(e.token_ids) for e in events)
    logprobs = [lp for e in events for lp in e.logprobs]
    finish = next((e.finish_reason for e in reversed(events) if e.finish_reason), None)
    usage = fmt.usage(len(req.prompt_token_ids), tokens, events[0].num_cached_tokens)
    if kind == "chat":
        lp = fmt.chat_logprobs(logprobs, text_of) if want_logprobs else None
        return fmt.chat_response(req.request_id, model, text, finish, lp, usage)
    lp = fmt.completion_logprobs(logprobs, text_of, 0) if want_logprobs else None
    return fmt.completion_response(req.request_id, model, text, finish, lp, usage)


async def _collect(agen: AsyncIterator[TokenEvent], first: TokenEvent) -> list[TokenEvent]:
    events = [first]
    if first.finish_reason:
        await agen.aclose()
        return events
    async for event in agen:
        events.append(event)
    return events


async def _stream(agen: AsyncIterator[TokenEvent], first: TokenEvent, req: GenerateRequest,
                  model: str, kind: str, include_usage: bool, want_logprobs: bool, text_of):
    created = int(time.time())
    rid = req.request_id
    completion_tokens = 0
    text_offset = 0
    cached = first.num_cached_tokens
    if kind == "chat":
        yield fmt.sse(fmt.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}))

    def chunk(event: TokenEvent) -> dict:
        nonlocal text_offset
        if kind == "chat":
            lp = fmt.chat_logprobs(event.logprobs, text_of) if want_logprobs else None
            delta = {"content": event.text} if event.text or not event.finish_reason else {}
            return fmt.chat_chunk(rid, model, created, delta, event.finish_reason, lp)
        lp = (fmt.completion_logprobs(event.logprobs, text_of, text_offset)
              if want_logprobs else None)
        text_offset += len(event.text)
        return fmt.completion_chunk(rid, model, created, event.text, event.finish_reason, lp)

    try:
        event = first
        while True:
            completion_tokens += len(event.token_ids)
            yield fmt.sse(chunk(event))
            if event.finish_reason:
                break
            try:
                event = await agen.__anext__()
            except StopAsyncIteration:
                break
        if include_usage:
            usage = fmt.usage(len(req.prompt_token_ids), completion_tokens, cached)
            make = fmt.chat_usage_chunk if kind == "chat" else fmt.completion_usage_chunk
            yield fmt.sse(make(rid, model, created, usage))
    except (UpstreamError, BadRequestError, NoWorkersError) as e:
        # Headers are sent: report in-band, as OpenAI does, then end the stream.
        yield fmt.sse({"error": {"message": str(e), "type": "server_error", "param": None,
                                 "code": None}})
    finally:
        await agen.aclose()
    yield fmt.SSE_DONE
