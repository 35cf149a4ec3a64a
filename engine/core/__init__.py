"""Requests and their scheduling: sequences, the continuous-batching scheduler, the block pool
with prefix hashing and the KV cache manager. No tensors here."""
