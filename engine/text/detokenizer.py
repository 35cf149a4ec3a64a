"""Incremental detokenization: turn a growing list of token ids into text deltas.

Byte-level BPE splits multi-byte characters across tokens, so decoding one token at a time
can produce replacement characters. We keep two offsets, as vLLM and TGI do: text is emitted
only once the decoded tail no longer ends in an incomplete character. When the output ends,
``flush`` emits whatever is still held back, incomplete bytes as U+FFFD, so the text equals
``tokenizer.decode`` of all the tokens (what HF and OpenAI return).
"""

from __future__ import annotations

from engine.text.tokenizer import Tokenizer


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the newly completed text (possibly empty)."""
        self.token_ids.extend(token_ids)
        return self._take(final=False)

    def flush(self) -> str:
        """The output ended: the text still held back, an incomplete character as U+FFFD."""
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        decode = lambda ids: self.tokenizer.decode(ids, self.skip_special_tokens)  # noqa: E731
        prefix_text = decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = decode(self.token_ids[self.prefix_offset :])
        if len(full_text) <= len(prefix_text) or (full_text.endswith("\ufffd") and not final):
            return ""
        delta = full_text[len(prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self.text += delta
        return delta
