"""The bytes a single token stands for, which decoding it alone cannot give.

Byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM) and SentencePiece's byte fallback (Llama 2,
Mistral) split a multi-byte character across tokens: ``decode([id])`` of such a token is
U+FFFD, so logprobs built from it lose the bytes (OpenAI's ``bytes`` field exists to carry
them) and show every piece of an emoji as the same "�". Here a token's bytes come from its
vocabulary entry, as the tokenizer's decoder defines them:

- a ``ByteLevel`` decoder: each character of the entry is one byte, through GPT-2's
  byte-to-printable-character table (the inverse of the pre-tokenizer's);
- a ``ByteFallback`` decoder: ``<0xNN>`` entries are the byte NN, other entries are text with
  the ``Replace`` steps of the decoder applied (SentencePiece's "▁" for a space);
- anything else, and added (special) tokens: the token decoded alone, encoded as UTF-8.

Torch-free (the router imports it)."""

from __future__ import annotations

import json
import re

from common.byte_level import char_to_byte

_BYTE_ENTRY = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_BYTE_OF_CHAR = char_to_byte()


def _decoder_steps(decoder: dict | None) -> list[dict]:
    if not decoder:
        return []
    if decoder.get("type") == "Sequence":
        return [s for d in decoder.get("decoders", []) for s in _decoder_steps(d)]
    return [decoder]


class TokenBytes:
    """``bytes_of(id)``, memoized, for a ``tokenizers.Tokenizer``."""

    def __init__(self, backend):
        self._backend = backend
        # The decoder's own state and the added tokens, not the whole tokenizer.json
        # (``to_str`` + ``json.loads``: 38 ms for the demo's 49k vocabulary here, more for a
        # 128k one, on the event loop at the first logprobs request).
        decoder = backend.decoder
        steps = _decoder_steps(json.loads(decoder.__getstate__()) if decoder else None)
        kinds = {s.get("type") for s in steps}
        self._byte_level = "ByteLevel" in kinds
        self._byte_fallback = "ByteFallback" in kinds
        self._replacements = [(s["pattern"].get("String"), s.get("content", ""))
                              for s in steps if s.get("type") == "Replace"
                              and isinstance(s.get("pattern"), dict)
                              and s["pattern"].get("String")]
        self._added = set(backend.get_added_tokens_decoder())
        self._memo: dict[int, bytes] = {}

    def bytes_of(self, token_id: int) -> bytes:
        found = self._memo.get(token_id)
        if found is None:
            found = self._memo[token_id] = self._compute(token_id)
        return found

    def _compute(self, token_id: int) -> bytes:
        entry = self._backend.id_to_token(token_id)
        if entry is None or token_id in self._added:
            return self._decoded(token_id)
        if self._byte_level:
            try:
                return bytes(_BYTE_OF_CHAR[c] for c in entry)
            except KeyError:  # not a byte-level entry after all
                return self._decoded(token_id)
        if self._byte_fallback:
            byte = _BYTE_ENTRY.fullmatch(entry)
            if byte:
                return bytes([int(byte.group(1), 16)])
            for pattern, content in self._replacements:
                entry = entry.replace(pattern, content)
            return entry.encode("utf-8")
        return self._decoded(token_id)

    def _decoded(self, token_id: int) -> bytes:
        return self._backend.decode([token_id], skip_special_tokens=False).encode("utf-8")


def shown(raw: bytes) -> str:
    """A token's text for a logprobs entry: its bytes as UTF-8, a byte that does not complete
    a character written as ``\\xNN`` (what OpenAI shows for such a token)."""
    return raw.decode("utf-8", "backslashreplace")
