"""The model: what to build (``config``, ``registry``), how (``layers/``, one file per family),
how to shard it (``tensor_parallel``) and where its weights come from (``loaders/``).

- A new dense family that is not a Llama variant: a file beside ``llama.py`` assembled from
  ``layers/``, its HF architecture name in ``registry.MODEL_CLASSES`` and in
  ``config.SUPPORTED_ARCHITECTURES`` (with any new config fields).
- MoE (Qwen3-MoE, Mixtral): the routed-experts layer (router, experts as grouped ``GatedMLP``
  weights, top-k combine) goes in ``layers/``, e.g. ``layers/moe.py``; the family file
  (``qwen3_moe.py``, ``mixtral.py``) swaps it in for ``GatedMLP`` in its decoder layer, and
  ``tensor_parallel`` learns to shard experts.
- MLA (DeepSeek): its attention block (low-rank q/kv projections, compressed KV cache) goes in
  ``layers/`` beside ``attention_block.py``; the family file is ``deepseek.py``.
- A new quantization method (FP8 first): a ``LinearMethod`` in ``layers/linear.py`` (or a
  ``layers/quantization/`` package once there are several), chosen from the checkpoint's
  quantization config and passed to each ``Linear`` the family builds.
"""
