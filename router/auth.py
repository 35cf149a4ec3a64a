"""API-key authentication at the door: decided from the headers alone, before the body is read
or parsed, so a client without a valid key costs the router no body buffering, JSON parsing or
validation (and learns nothing from 400s about what the API accepts). The accepted key is left
in the ASGI scope's state for the handlers (it selects the request's prefix-cache namespace).

Probes stay open: ``/health`` and ``/ready`` (load balancers, orchestrators) and ``/metrics``
(Prometheus); every other path, unknown ones included, needs a key once keys are configured.
"""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
_LOG_EVERY_S = 1.0  # refusals are logged at most once a second, with their count


def bearer_key(headers) -> str:
    """The key of an ``Authorization: Bearer KEY`` header (any case of "bearer"), else that
    of an ``x-api-key`` header (how Anthropic's clients send it), else ''."""
    api_key = ""
    for name, value in headers:
        if name == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() if text[:7].lower() == "bearer " else ""
        if name == b"x-api-key":
            api_key = value.decode("latin-1").strip()
    return api_key


class APIKeyMiddleware:
    def __init__(self, app, api_keys: frozenset[str]):
        self.app = app
        self.api_keys = api_keys
        self._refused_since_log = 0
        self._last_log = 0.0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.api_keys or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        key = bearer_key(scope.get("headers") or ())
        if key not in self.api_keys:
            self._note_refusal(scope)
            return await _unauthorized(send)
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)

    def _note_refusal(self, scope) -> None:
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            client = scope.get("client") or ("?", 0)
            log.warning("refused %d request(s) without a valid API key (latest: %s %s from %s)",
                        self._refused_since_log, scope.get("method"), scope.get("path"),
                        client[0])
            self._refused_since_log, self._last_log = 0, now


async def _unauthorized(send) -> None:
    body = json.dumps({"error": {
        "message": "missing or invalid API key (send 'Authorization: Bearer KEY')",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b"Bearer")]})
    await send({"type": "http.response.body", "body": body})
