"""The prefill role: compute prompt KV, sample the first token, hold the blocks for a pull."""
