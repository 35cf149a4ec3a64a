"""Per-request text output: incremental detokenization and stop strings.

Text that could still turn out to be the start of a stop string is held back until it cannot,
so a streaming client never receives characters that a stop string later removes. Only that:
the longest tail of the text that begins some stop string, not the length of the longest stop
string (which would hold back a whole short answer behind a long stop string). Stop strings
are not looked for before ``min_tokens`` tokens (vLLM's rule, as for EOS and stop token ids).
"""

from __future__ import annotations

from common.sampling_params import SamplingParams
from engine.text.detokenizer import IncrementalDetokenizer
from engine.text.tokenizer import Tokenizer


class TextOutput:
    def __init__(self, tokenizer: Tokenizer | None, params: SamplingParams):
        self.params = params
        self.detok = (
            IncrementalDetokenizer(tokenizer, params.skip_special_tokens) if tokenizer else None
        )
        self.text = ""
        self.num_emitted_chars = 0
        self.stopped = False  # a stop string ended the text: nothing after it is shown
        self.num_tokens = 0  # output tokens seen, for min_tokens
        self._longest_stop = max((len(s) for s in params.stop), default=0)

    def add_tokens(self, token_ids: list[int]) -> bool:
        """Decode new tokens; True when a stop string ended the output."""
        if self.detok is None:
            return False
        self.num_tokens += len(token_ids)
        return self._append(self.detok.add(token_ids))

    def _append(self, new_text: str) -> bool:
        if self.stopped:
            return True
        search_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += new_text
        if self.num_tokens < self.params.min_tokens:
            return False
        for stop in self.params.stop:
            at = self.text.find(stop, search_from)
            if at != -1:
                end = at + len(stop) if self.params.include_stop_str_in_output else at
                self.text = self.text[:end]
                self.stopped = True
                return True
        return False

    def add_sent_tokens(self, token_ids: list[int]) -> None:
        """Tokens whose text the client already has (a prefill worker sent it): they give
        context for detokenizing and stop strings, but are not sent again."""
        self.add_tokens(token_ids)
        self.num_emitted_chars = len(self.text)

    def take_delta(self, finished: bool, handing_off: bool = False) -> str:
        """Text ready to send: everything once finished, else all but the held-back tail.
        ``handing_off``: another worker continues this output (a prefill worker's first token),
        so an incomplete character stays held back for it instead of becoming U+FFFD."""
        if finished and not handing_off and self.detok is not None:
            self._append(self.detok.flush())
        limit = len(self.text) if finished else max(self.num_emitted_chars,
                                                    len(self.text) - self._held_back())
        delta = self.text[self.num_emitted_chars : limit]
        self.num_emitted_chars = limit
        return delta

    def _held_back(self) -> int:
        """Characters at the end of the text that begin a stop string (the longest such)."""
        held = 0
        for stop in self.params.stop:
            held = max(held, _tail_starting(self.text, stop, self.num_emitted_chars))
        return held


def _tail_starting(text: str, stop: str, emitted: int) -> int:
    """The length of the longest tail of ``text`` that is a proper prefix of ``stop``, looking
    no further back than ``emitted`` (what was sent cannot be held back). Candidates are the
    tail's occurrences of the stop's first character, earliest (longest) first."""
    start = max(emitted, len(text) - len(stop) + 1)
    at = text.find(stop[0], start)
    while at != -1:
        if stop.startswith(text[at:]):
            return len(text) - at
        at = text.find(stop[0], at + 1)
    return 0
