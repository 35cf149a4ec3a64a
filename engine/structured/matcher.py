"""One request's grammar state, advanced by the tokens it generated, and the engine's factory.

A matcher is rebuilt from what any worker has: the grammar (``SamplingParams.structured``)
and the tokens generated so far. So the decode worker of a P/D handoff replays the prefill's
first token, and a migrated stream replays everything it generated; nothing of the matcher's
state crosses the wire. It catches up lazily: before each mask it consumes the output tokens
it has not seen, which is the one point both decode loops share (the synchronous step passes
the sequence's tokens; the overlapped one the same with step N's token read from the host).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from common.grammar import GrammarError, grammar_text
from common.structured_output import StructuredOutput

log = logging.getLogger(__name__)

_CACHED_GRAMMARS = 128  # compiled matchers kept per engine, by spec (LRU)


class GrammarMatcher:
    """The llguidance matcher of one request plus how many output tokens it consumed."""

    def __init__(self, matcher, request_id: str = ""):
        self._m = matcher
        self.request_id = request_id
        self.num_consumed = 0
        self.failed = False  # a token the grammar refused: only EOS is allowed from here

    def catch_up(self, output_token_ids: list[int]) -> None:
        """Consume the tokens of ``output_token_ids`` not consumed yet."""
        new = output_token_ids[self.num_consumed:]
        self.num_consumed = len(output_token_ids)
        if not new or self.failed:
            return
        if self._m.is_stopped():  # e.g. the EOS that ended it, seen by a step in flight
            return
        for token in new:
            if not self._m.consume_token(token):
                self.failed = True
                log.warning("request %s: token %d does not follow its grammar (%s); only EOS "
                            "is allowed from here", self.request_id, token, self._m.get_error())
                return

    @property
    def llg(self):
        return self._m

    def is_accepting(self) -> bool:
        return not self.failed and self._m.is_accepting()

    def is_stopped(self) -> bool:
        return self.failed or self._m.is_stopped()


class GrammarCompiler:
    """Matchers for one engine's tokenizer. The token trie (~0.2 s for a 49k vocabulary) is
    built on first use; a grammar is compiled once per spec and copied per request."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: tuple[int, ...]):
        """``tokenizer``: engine.text.tokenizer.Tokenizer (None: structured output refused);
        ``vocab_size``: the logits' width (may exceed the tokenizer's, padded embeddings)."""
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._ll_tokenizer = None
        self._compiled: OrderedDict[StructuredOutput, object] = OrderedDict()

    def _tokenizer_for_library(self):
        if self._ll_tokenizer is None:
            import llguidance

            if self._tokenizer is None:
                raise GrammarError("structured output needs a model with a tokenizer")
            eos = list(self.eos_token_ids) or None
            self._ll_tokenizer = llguidance.LLTokenizer(
                self._tokenizer.backend.to_str(), n_vocab=self.vocab_size, eos_token=eos)
        return self._ll_tokenizer

    def matcher(self, structured: StructuredOutput, replay_token_ids: list[int] = (),
                request_id: str = "") -> GrammarMatcher:
        """A fresh matcher for ``structured`` that has consumed ``replay_token_ids`` (tokens
        generated elsewhere before this worker took the request). Raises GrammarError (a
        ValueError) with the library's reason when it rejects the grammar."""
        template = self._compiled.get(structured)
        if template is None:
            import llguidance

            m = llguidance.LLMatcher(self._tokenizer_for_library(), grammar_text(structured))
            if m.is_error():
                raise GrammarError(f"invalid {structured.kind} for structured output: "
                                   f"{m.get_error()}")
            template = self._compiled[structured] = m
            if len(self._compiled) > _CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(structured)
        matcher = GrammarMatcher(template.deep_copy(), request_id)
        if replay_token_ids:
            matcher.catch_up(list(replay_token_ids))
            if matcher.failed:
                raise GrammarError("the tokens generated so far do not follow the grammar")
            matcher.num_consumed = 0  # counts this sequence's own output tokens from here
        return matcher
