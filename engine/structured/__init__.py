"""Grammar-constrained decoding: a request's grammar as a token matcher (``matcher.py``) and
the per-step token bitmask applied to the logits on the device (``bitmask.py``). The grammar
itself comes from ``common/grammar.py`` (llguidance; why that library is said there)."""
