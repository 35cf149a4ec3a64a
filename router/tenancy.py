"""Prefix-cache namespaces per API key: tenant isolation by default.

With API keys configured, every request's blocks are hashed under its key's namespace (an
extra key of every block hash, like ``cache_salt``), so one tenant's cached prefix is never a
hit for another, and ``cached_tokens`` never reveals what another tenant sent. A request's own
``cache_salt`` nests inside its key's namespace: guessing another tenant's salt gains nothing.
Sharing the cache across keys is an explicit opt-in (``--share-cache-across-keys``).

The namespace is a digest of the key, never the key itself: it travels to the workers (the
gRPC ``cache_salt`` field), into their block hashes and into the KV events in Redis.
"""

from __future__ import annotations

import hashlib

_NAMESPACE_DOMAIN = b"pdserve-cache-namespace\0"  # so the digest means nothing elsewhere


def key_namespace(api_key: str | None, share_across_keys: bool) -> str | None:
    """The prefix-cache namespace of requests made with ``api_key`` (None: the shared one)."""
    if api_key is None or share_across_keys:
        return None
    digest = hashlib.sha256(_NAMESPACE_DOMAIN + api_key.encode()).hexdigest()[:32]
    return f"key:{digest}"


def cache_keys(namespace: str | None, cache_salt: str | None) -> tuple[str, ...]:
    """The extra keys of a request's block hashes: its key's namespace, then its own salt."""
    return tuple(k for k in (namespace, cache_salt) if k)
