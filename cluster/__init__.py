"""Cluster plumbing shared by the workers and the router: the Redis schema (torch-free), and
the worker-side service runtime (registry heartbeat, KV-event publishing, metrics)."""
