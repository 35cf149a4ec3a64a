"""How a request through the cluster can fail, as the API layer maps it to HTTP statuses."""

from __future__ import annotations


class NoWorkersError(RuntimeError):
    """No worker can take the request now (HTTP 503)."""


class BadRequestError(ValueError):
    """The workers refused the request as invalid (HTTP 400)."""


class UpstreamError(RuntimeError):
    """Every attempt failed (HTTP 502)."""
