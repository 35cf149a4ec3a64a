"""Triton kernels for CUDA (paged decode attention, fused norms, RoPE+KV write, GEMV)."""
