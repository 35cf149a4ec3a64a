"""Every cluster-wide default, defined once (torch-free). Config dataclasses and CLI flags
read these names; a value that must agree across processes is only ever written here."""

from __future__ import annotations

# Seed of every block hash. Prefix-cache identities (and the router's prefix index) only
# agree between processes that use the same seed, so it names the hashing scheme's version.
HASH_SEED = "pdserve-v1"

# Tokens per KV block. Workers that exchange KV, and the router's prefix index, must agree.
BLOCK_SIZE_TOKENS = 16

# The cluster registry (worker records, KV events): a local Redis, database 0.
REDIS_URL = "redis://127.0.0.1:6379/0"

# Prefix of every Redis key; one per cluster so several clusters can share one Redis.
REDIS_KEY_PREFIX = "pdserve:"

# How long a prefill worker holds a request's KV blocks for a decode worker that never pulls
# them (a lost router, a dead receiver) before it frees them.
KV_LEASE_S = 30.0

# How long a decode worker waits for an unfinished KV pull before the request fails.
KV_PULL_TIMEOUT_S = 30.0

# Largest gRPC message either side accepts: a long prompt travels as token ids (4 bytes
# each on the wire at worst), and gRPC's own 4 MiB default caps prompts near a million tokens.
GRPC_MAX_MESSAGE_BYTES = 64 << 20

# A worker rewrites its registry record this often ...
HEARTBEAT_S = 1.0
# ... and the record expires this long after the last write, so a worker that died without
# deregistering drops out of rotation within a few missed heartbeats.
WORKER_RECORD_TTL_S = 5.0
