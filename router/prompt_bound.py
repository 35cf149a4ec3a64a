"""How many characters of text one token can stand for at most, read from ``tokenizer.json``,
so a prompt that cannot fit the context is refused by its length, before tokenizing it.

Why the bound holds: the tokenizer splits the (normalized) text into pieces and every token
covers one vocabulary entry, whose string is at least as long as the text it covers (byte-level
BPE writes each byte as one character, and a character is at least one byte; SentencePiece's
``▁`` is one space; a byte-fallback token ``<0x41>`` covers one byte). So a text of C characters
has at least C / L tokens, L the longest vocabulary entry (added tokens included). What can
break it is a step that removes or merges input characters, so we allow only steps that cannot:

- normalizers: none, ``NFD``/``NFKD``/``Lowercase``/``Prepend``/``Append`` (they never
  shorten), ``NFC``/``NFKC`` (canonical composition joins at most 4 code points into one, as
  no canonical decomposition is longer: x4), ``Replace`` of a literal string by a non-empty one;
- pre-tokenizers that keep every character: ``ByteLevel``, ``Digits``, ``Metaspace``,
  ``Punctuation``, ``Split`` that does not remove its matches;
- models in which every unknown character still costs a token: ``BPE`` after a byte-level
  pre-tokenizer (nothing is unknown), any model with byte fallback, ``BPE`` with an unfused unk
  token. ``WordPiece`` and ``WordLevel`` turn a whole unknown word into one ``[UNK]``, fused
  unknowns are one token for any run, and BPE without an unk token drops them: no bound.

Anything else (``Strip``, ``BertNormalizer``, ``Precompiled``, ``Whitespace`` splitting, ...)
gives ``None``: no refusal by length, only tokenization off the event loop.
"""

from __future__ import annotations

import json
import math

_KEEPING_PRE_TOKENIZERS = {"ByteLevel", "Digits", "Metaspace", "Punctuation", "UnicodeScripts"}
_NEVER_SHORTER_NORMALIZERS = {"NFD", "NFKD", "Lowercase", "Prepend", "Append", "ByteLevel"}


def _normalizer_factor(n: dict | None) -> float | None:
    if n is None:
        return 1.0
    kind = n.get("type")
    if kind == "Sequence":
        factor = 1.0
        for step in n.get("normalizers", []):
            f = _normalizer_factor(step)
            if f is None:
                return None
            factor *= f
        return factor
    if kind in _NEVER_SHORTER_NORMALIZERS:
        return 1.0
    if kind in ("NFC", "NFKC"):
        return 4.0
    if kind == "Replace":
        pattern, content = n.get("pattern", {}), n.get("content", "")
        if "String" not in pattern or not content:
            return None
        return max(1.0, len(pattern["String"]) / len(content))
    return None


def _pre_tokenizer_keeps_text(p: dict | None) -> bool:
    if p is None:
        return True
    kind = p.get("type")
    if kind == "Sequence":
        return all(_pre_tokenizer_keeps_text(step) for step in p.get("pretokenizers", []))
    if kind == "Split":
        return p.get("behavior") != "Removed"
    return kind in _KEEPING_PRE_TOKENIZERS


def _has_byte_level(p: dict | None) -> bool:
    if p is None:
        return False
    if p.get("type") == "Sequence":
        return any(_has_byte_level(step) for step in p.get("pretokenizers", []))
    return p.get("type") == "ByteLevel"


def _model_is_bounded(m: dict, byte_level: bool) -> bool:
    """Unknown characters must each become a token: after a byte-level pre-tokenizer there are
    none; with byte fallback each byte is a token; else each needs its own (unfused) unk token
    (without an unk token BPE drops them)."""
    if m.get("byte_fallback") or (byte_level and m.get("type") == "BPE"):
        return True
    return m.get("type") == "BPE" and m.get("unk_token") is not None and not m.get("fuse_unk")


def max_chars_per_token(tokenizer_json: str, vocab: dict[str, int]) -> float | None:
    """The bound L described above (times the normalizer's factor), or None for no bound."""
    spec = json.loads(tokenizer_json)
    factor = _normalizer_factor(spec.get("normalizer"))
    if factor is None or spec.get("truncation") is not None:
        return None
    if not _pre_tokenizer_keeps_text(spec.get("pre_tokenizer")):
        return None
    pre = spec.get("pre_tokenizer")
    if not _model_is_bounded(spec.get("model") or {}, _has_byte_level(pre)):
        return None
    longest = max((len(entry) for entry in vocab), default=1)
    return max(1, longest) * factor


def max_prompt_chars(max_model_len: int, chars_per_token: float | None) -> int | None:
    """Texts longer than this have more than ``max_model_len`` tokens."""
    if chars_per_token is None:
        return None
    return math.ceil(max_model_len * chars_per_token)
