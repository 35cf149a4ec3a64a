"""The FastAPI application: OpenAI routes, operator routes, and the background tasks that keep
the registry and the prefix index current."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.redis_acl import ROUTER, url_for_role
from common.redis_schema import Keys
from router.admission import Admission
from router.anthropic import errors as anthropic_errors
from router.anthropic.routes import add_routes as add_anthropic_routes
from router.auth import APIKeyMiddleware, bearer_key
from router.body_limit import BodyLimitMiddleware
from router.chat_route import prepare_chat
from router.config import RouterConfig
from router.dispatcher import Dispatcher, GenerateRequest
from router.errors import APIError, http_error, unavailable
from router.extra_routes import add_routes as add_extra_routes
from router.fast_routes import CompletionFastPath
from router.front_door import FrontDoor
from router.kv_event_consumer import KVEventConsumer
from router.load_tracker import LoadTracker
from router.metrics import RouterMetrics
from router.metrics_merge import merge_expositions
from router.model_info import ModelInfo
from router.openai_schema import ChatCompletionRequest, CompletionRequest
from router.prefix_index import PrefixIndex
from router.rate_limit import KeyRateLimiter
from router.readiness import readiness
from router.registry import RegistryView
from router.request_validation import refuse_contradictions, refuse_unsupported, validation_error
from router.respond import respond
from router.sampling_request import context_limit, sampling
from router.sibling_metrics import SiblingMetrics
from router.structured_map import precheck, requested_structured
from router.tenancy import cache_keys, key_namespace
from router.worker_clients import WorkerClients

log = logging.getLogger(__name__)


class RouterState:
    """Everything a request handler needs, built once per app."""

    def __init__(self, config: RouterConfig):
        import redis.asyncio as aioredis

        self.config = config
        self.model = ModelInfo.load(config)
        self.redis = aioredis.from_url(url_for_role(config.redis_url, config.cluster_secret,
                                                    ROUTER), socket_timeout=2.0,
                                       socket_connect_timeout=2.0)
        self.keys = Keys(config.redis_prefix)
        self.index = PrefixIndex()
        self.metrics = RouterMetrics()
        self.load = LoadTracker()
        secret = config.cluster_secret
        self.clients = WorkerClients(token=secret.grpc_token if secret else None)
        self.consumer: KVEventConsumer | None = None

        def on_leave(worker_id: str) -> None:
            self.consumer.forget(worker_id)
            self.load.forget(worker_id)

        self.registry = RegistryView(self.redis, self.keys, on_leave=on_leave, secret=secret)
        self.consumer = KVEventConsumer(self.redis, self.keys, self.index, self.registry)
        self.dispatcher = Dispatcher(config, self.registry, self.index, self.clients,
                                     self.metrics, self.load)
        self.admission = Admission(config.max_in_flight_per_worker,
                                   config.overload_retry_after_s, self.metrics.rejected)
        self.rate_limiter = KeyRateLimiter(config.rate_limits.per_process(config.processes),
                                           self.metrics.rejected)
        self.siblings = (SiblingMetrics(config.sibling_dir, config.process_index,
                                        config.processes, self.render_metrics)
                         if config.sibling_dir and config.processes > 1 else None)

    def admit(self, api_key: str | None = None):
        """A slot for one request, or 429/503 before any work on it: the key's rate limits
        (router/rate_limit.py), then the cluster's capacity (router/admission.py)."""
        if self.config.rate_limits.enabled:
            self.rate_limiter.admit(api_key)
        return self.admission.enter(len(self.registry.live("decode")))

    def on_finish(self, api_key: str | None):
        """What a request calls when it ends: charges its tokens to the key's budget."""
        if self.config.rate_limits.tokens_per_s <= 0:
            return None
        return lambda prompt_tokens, output_tokens: self.rate_limiter.charge(
            api_key, prompt_tokens + output_tokens)

    def render_metrics(self) -> bytes:
        m = self.metrics
        m.index_blocks.set(self.index.num_blocks())
        for role in ("prefill", "decode"):
            m.workers.labels(role).set(len(self.registry.live(role)))
        return generate_latest(m.registry)

    def max_model_len(self) -> int | None:
        if self.config.max_model_len:
            return self.config.max_model_len
        lens = [r.max_model_len for r in self.registry.live("decode") if r.max_model_len]
        return min(lens) if lens else None


def create_app(config: RouterConfig) -> FrontDoor:
    state = RouterState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.registry.refresh()
        tasks = [asyncio.create_task(state.registry.run(), name="registry"),
                 asyncio.create_task(state.consumer.run(), name="kv-events")]
        if state.siblings is not None:
            await state.siblings.start()
        yield
        if state.siblings is not None:
            await state.siblings.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await state.clients.close()
        await state.redis.aclose()

    # The interactive API docs only with --docs: an open router should not advertise itself.
    docs = {} if config.docs else dict(docs_url=None, redoc_url=None, openapi_url=None)
    app = FastAPI(title="pdserve router", lifespan=lifespan,
                  description="OpenAI-compatible front door of a pdserve cluster", **docs)
    app.state.router = state

    def shaped(request: Request, exc: APIError):
        """Anthropic's error shape on its routes, OpenAI's everywhere else."""
        if request.url.path.startswith(anthropic_errors.PATH_PREFIX):
            return anthropic_errors.response(exc)
        return exc.response()

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return shaped(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return shaped(request, validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        """Unknown paths (404), wrong methods (405), unparseable bodies: OpenAI's shape, not
        FastAPI's ``{"detail": ...}``."""
        where = f"{request.method} {request.url.path}"
        message = {404: f"Unknown request URL: {where}",
                   405: f"Method not allowed: {where}"}.get(exc.status_code, str(exc.detail))
        return shaped(request, http_error(exc.status_code, message, headers=exc.headers))

    async def authorize(request: Request) -> str | None:
        """The caller's API key (None when the router runs without keys). APIKeyMiddleware
        has refused bad keys before the body was read; this checks again where it is used.
        ``async``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
        per request for a dictionary lookup."""
        accepted, key = key_of(request.scope)
        if not accepted:
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key")
        return key

    def key_of(scope) -> tuple[bool, str | None]:
        """(whether the key is accepted, the key): ``authorize``'s check, which the fast path
        (router/fast_routes.py) makes on the scope itself."""
        if not config.requires_auth:
            return True, None
        key = bearer_key(scope.get("headers") or ())
        return key in config.api_keys, key

    def salt_of(api_key: str | None, body) -> tuple[str, ...]:
        namespace = key_namespace(api_key, config.share_cache_across_keys)
        return cache_keys(namespace, body.cache_salt)

    # -- OpenAI routes ------------------------------------------------------------------------
    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        created = int(state.model.created)
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "pdserve"}
            for name in state.model.names]}

    # The two completion routes' handlers serve FastAPI's routes and the fast path alike.
    async def run_chat(body: ChatCompletionRequest, request: Request, api_key: str | None):
        state.model.check_name(body.model)
        refuse_unsupported(body, config.lenient)
        refuse_contradictions(body)
        slot = state.admit(api_key)
        try:
            job = await prepare_chat(state, body, salt_of(api_key, body),
                                     on_finish=state.on_finish(api_key))
        except BaseException:
            slot.release()
            raise
        opts = body.stream_options
        return await respond(state, request, job.req, body.model, body.stream, "chat",
                             bool(opts and opts.include_usage), body.logprobs, slot, job.shaper,
                             job.legacy, n=body.n,
                             continuous_usage=bool(opts and opts.continuous_usage_stats))

    async def run_completion(body: CompletionRequest, request: Request, api_key: str | None):
        state.model.check_name(body.model)
        refuse_unsupported(body, config.lenient)
        refuse_contradictions(body)
        slot = state.admit(api_key)
        try:
            prompt = await state.model.encode_prompt(body.prompt, context_limit(state))
            await precheck([requested_structured(body)])
            params = sampling(body, state, len(prompt), body.max_tokens, logprobs=body.logprobs,
                              prompt_param="prompt")
            req = GenerateRequest(f"cmpl-{uuid.uuid4().hex}", prompt, params,
                                  salt_of(api_key, body), state.on_finish(api_key))
        except BaseException:
            slot.release()
            raise
        opts = body.stream_options
        return await respond(state, request, req, body.model, body.stream, "completion",
                             bool(opts and opts.include_usage), body.logprobs is not None, slot,
                             n=body.n, continuous_usage=bool(opts and opts.continuous_usage_stats))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request,
                               api_key: str | None = Depends(authorize)):
        return await run_chat(body, request, api_key)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request,
                          api_key: str | None = Depends(authorize)):
        return await run_completion(body, request, api_key)

    add_extra_routes(app, state, authorize)
    add_anthropic_routes(app, state, authorize, salt_of)

    # -- operator routes ----------------------------------------------------------------------
    @app.get("/health")
    async def health():
        """Liveness: 200 while the process serves; whether it can answer is /ready."""
        ready = readiness(state.registry, state.max_model_len())
        return {"status": "ok", "ready": ready.ready, "redis": bool(state.registry.redis_ok),
                "pid": os.getpid(), "processes": config.processes,
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
        """This process's metrics; with --workers N, every process's, merged."""
        if state.siblings is None:
            body = state.render_metrics()
        else:
            body = merge_expositions(await state.siblings.gather())
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

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
        a = state.admission
        return {
            "policy": config.policy, "redis": bool(state.registry.redis_ok),
            # This process's view (each of --workers N follows the cluster on its own).
            "router": {"pid": os.getpid(), "processes": config.processes},
            "admission": {"in_flight": a.in_flight, "max_in_flight_per_worker":
                          a.limit_per_worker, "rejected": dict(a.rejected)},
            "pools": {"prefill": len(state.registry.live("prefill")),
                      "decode": len(state.registry.live("decode"))},
            "workers": sorted(workers, key=lambda w: (w["role"], w["worker_id"])),
            "index": {"blocks": state.index.num_blocks(), "events": state.consumer.num_events,
                      "resyncs": state.consumer.num_resyncs,
                      "accuracy_exact_share": d.accuracy.exact_share,
                      "accuracy_verdict": d.accuracy.last_verdict},
            "prefix_hit_ratio": d.prefix_hit_ratio,
        }

    # In front of FastAPI rather than inside it (router/front_door.py): the key is checked
    # before the body limit reads the body (router/auth.py), then the fast path or FastAPI
    # parses it. (The pid header: router/process_header.py.)
    fast = CompletionFastPath(app, key_of=key_of, routes={
        "/v1/chat/completions": (ChatCompletionRequest, run_chat),
        "/v1/completions": (CompletionRequest, run_completion)})
    door = APIKeyMiddleware(BodyLimitMiddleware(fast, max_bytes=config.max_body_bytes),
                            api_keys=config.api_keys)
    return FrontDoor(door, app)
