"""Anthropic's error shape, ``{"type": "error", "error": {"type", "message"}}``, for any
APIError raised on the Anthropic routes."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from router.errors import APIError

PATH_PREFIX = "/v1/messages"
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
          503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def response(exc: APIError) -> JSONResponse:
    message = exc.body()["error"]["message"]
    if exc.param and exc.param not in message:
        message = f"{exc.param}: {message}"
    return JSONResponse(error_body(exc.status, message), status_code=exc.status,
                        headers=exc.headers)
