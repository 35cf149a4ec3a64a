"""The worker process both roles run: gRPC server, Redis presence, metrics, draining."""
