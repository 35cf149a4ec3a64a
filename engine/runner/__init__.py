"""One rank's weights and KV cache, running a scheduled step: CUDA graphs, TP group, sampling."""
