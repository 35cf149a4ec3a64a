"""The router: OpenAI-compatible front door with KV-aware routing (torch-free)."""
