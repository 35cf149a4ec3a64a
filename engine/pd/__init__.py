"""The engine's P/D roles: holding KV under a lease (prefill), pulling it (decode)."""
