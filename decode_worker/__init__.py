"""The decode role: pull prompt KV (or prefill locally), decode in a continuous batch, stream."""
