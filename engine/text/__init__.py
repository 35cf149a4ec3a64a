"""Text in and out: tokenizer and chat templates, incremental detokenization, stop strings."""
