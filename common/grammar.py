"""A ``StructuredOutput`` as a grammar of the constrained-decoding library, and its check.

The library is llguidance (the Rust engine behind Guidance), chosen over xgrammar on evidence
measured here (issue 18, benchmarks/structured_bench.py):

- it has no Python dependencies (no torch, no transformers, no triton), so the torch-free
  router checks a schema itself and answers 400 with the library's own reason before any
  worker is involved; xgrammar imports torch and pulls triton;
- it builds its token trie from our ``tokenizer.json`` text as it is (the HF ``tokenizers``
  backend the engine already has, GGUF-derived or not); xgrammar wants a transformers
  tokenizer object or a hand-decoded vocabulary;
- it refuses JSON-schema keywords it cannot enforce (``not``, ``if``/``then``,
  ``uniqueItems``, ``propertyNames``, ``dependentRequired``: "Unimplemented keys") where
  xgrammar 0.2.8 accepted them all, so whatever we accept we enforce;
- it compiles lazily: a grammar is ready in ~1 ms (xgrammar 7 ms for the same schema, on
  this 2-core VM). Its price is the mask: ~16 µs per token at batch 1 (xgrammar ~2 µs with
  its precomputed cache), ~0.35 ms for 32 rows in parallel (xgrammar ~0.17 ms).

JSON is generated compact (no optional whitespace): with flexible whitespace a weak or random
model can emit blanks forever and never close the object.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from functools import lru_cache

from common.byte_level import char_to_byte
from common.structured_output import StructuredOutput

# llguidance's per-schema options ("x-guidance"): compact separators, no free whitespace.
_JSON_OPTIONS = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """The library rejected the spec; the message is its reason."""


@lru_cache(maxsize=256)
def grammar_text(structured: StructuredOutput) -> str:
    """The llguidance grammar (its JSON definition) for ``structured``. Raises GrammarError
    for a spec that is not even well-formed (invalid JSON)."""
    import llguidance

    if structured.kind in ("json_schema", "json_object"):
        spec = structured.spec if structured.kind == "json_schema" else '{"type": "object"}'
        try:
            schema = json.loads(spec)
        except ValueError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict | bool):
            raise GrammarError("the JSON schema must be an object (or a boolean)")
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
    if structured.kind == "regex":
        return llguidance.LLMatcher.grammar_from_regex(structured.spec)
    return llguidance.grammar_from("ebnf", structured.spec)


_CHECKED_SPECS = 256
# spec -> grammar_problem's answer, least recently used first (an lru_cache cannot say whether
# it holds a spec, which is_checked must, so the router skips the thread hop for known specs).
_problems: OrderedDict[StructuredOutput, str | None] = OrderedDict()


def is_checked(structured: StructuredOutput) -> bool:
    """Whether ``grammar_problem`` has the answer for ``structured`` already (a lookup)."""
    return structured in _problems


def grammar_problem(structured: StructuredOutput) -> str | None:
    """None if the library accepts ``structured``, else its reason (no tokenizer needed).
    Answers are kept for the last ``_CHECKED_SPECS`` specs. Safe from several threads (the
    router checks in one): a lost race computes an answer twice."""
    if structured in _problems:
        with contextlib.suppress(KeyError):  # evicted by another thread meanwhile
            _problems.move_to_end(structured)
            return _problems[structured]
    problem = _find_problem(structured)
    _problems[structured] = problem
    while len(_problems) > _CHECKED_SPECS:
        with contextlib.suppress(KeyError):
            _problems.popitem(last=False)
    return problem


def _find_problem(structured: StructuredOutput) -> str | None:
    import llguidance

    try:
        grammar = grammar_text(structured)
    except GrammarError as e:
        return str(e)
    except ValueError as e:  # llguidance's own parse errors
        return str(e)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
    if is_error:
        return "; ".join(messages) or "the grammar was rejected"
    # A grammar can be well-formed and still match nothing (a $ref that only refers to
    # itself): no byte can start its output. Asked of a matcher over the 256 bytes, that is
    # tokenizer-independent: 0.7 ms for an integer, 6 ms for a 12-property object, 27 ms for
    # an object that requires itself (timed here beside a benchmark).
    matcher = llguidance.LLMatcher(_byte_tokenizer(), grammar)
    matcher.compute_logit_bias()
    if matcher.is_error():
        return "no output satisfies it (nothing can be generated from its start)"
    return None


@lru_cache(maxsize=1)
def _byte_tokenizer():
    """An llguidance tokenizer of the 256 bytes and an end token (~2 ms to build)."""
    import llguidance

    vocab = {**char_to_byte(), "<end>": 256}
    spec = {"version": "1.0", "truncation": None, "padding": None, "normalizer": None,
            "added_tokens": [{"id": 256, "content": "<end>", "single_word": False,
                              "lstrip": False, "rstrip": False, "normalized": False,
                              "special": True}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": True, "use_regex": True},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": []}}
    return llguidance.LLTokenizer(json.dumps(spec), n_vocab=257, eos_token=[256])


def check_structured(structured: StructuredOutput) -> None:
    """Raises GrammarError with the library's reason when it rejects ``structured``."""
    problem = grammar_problem(structured)
    if problem is not None:
        raise GrammarError(f"invalid {structured.kind} for structured output: {problem}")
