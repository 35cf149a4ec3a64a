"""OpenAI-style error bodies: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": _utf8(self.message), "type": self.type,
                          "param": None if self.param is None else _utf8(self.param),
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _utf8(text: str) -> str:
    """Client text echoed in a message may hold lone surrogates, which would make encoding the
    response fail (a 500): escape them instead."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def http_error(status: int, message: str, headers: dict[str, str] | None = None) -> APIError:
    """404 (unknown path), 405 (wrong method) and the like, in OpenAI's shape."""
    codes = {404: "not_found", 405: "method_not_allowed"}
    return APIError(status, message, code=codes.get(status), headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unavailable(message: str, retry_after_s: int = 1) -> APIError:
    return APIError(503, message, type_="service_unavailable", code="no_workers",
                    headers={"Retry-After": str(retry_after_s)})
