"""The requests an engine serves, by id: each one's sequence, text output and generator."""

from __future__ import annotations

import torch

from engine.core.sequence import Sequence
from engine.runner.sampler import SamplingRow
from engine.structured.matcher import GrammarMatcher
from engine.text.output_processor import TextOutput
from engine.text.tokenizer import Tokenizer


class RequestTable:
    """What the engine keeps per live request besides the scheduler's view of it: the
    ``Sequence``, its ``TextOutput`` (detokenizer, stop strings) and, for a seeded request,
    its own random generator and, for a constrained one, its grammar matcher. A request is
    here from ``track`` until ``forget``."""

    def __init__(self, tokenizer: Tokenizer | None, device: torch.device):
        self.tokenizer = tokenizer
        self.device = device
        self.seqs: dict[str, Sequence] = {}
        self._text: dict[str, TextOutput] = {}
        self._generators: dict[str, torch.Generator] = {}
        self._matchers: dict[str, GrammarMatcher] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.seqs

    def get(self, request_id: str) -> Sequence | None:
        return self.seqs.get(request_id)

    def track(self, seq: Sequence, matcher: GrammarMatcher | None = None) -> None:
        self.seqs[seq.request_id] = seq
        if matcher is not None:
            self._matchers[seq.request_id] = matcher
        self._text[seq.request_id] = TextOutput(self.tokenizer, seq.sampling_params)
        if seq.sampling_params.seed is not None:
            gen = torch.Generator(device=self.device)
            self._generators[seq.request_id] = gen.manual_seed(seq.sampling_params.seed)

    def forget(self, request_id: str) -> None:
        self.seqs.pop(request_id, None)
        self._text.pop(request_id, None)
        self._generators.pop(request_id, None)
        self._matchers.pop(request_id, None)

    def text(self, request_id: str) -> TextOutput:
        return self._text[request_id]

    def generator(self, request_id: str) -> torch.Generator | None:
        """The request's own generator (it has a seed), else None: the sampler's default."""
        return self._generators.get(request_id)

    def matcher(self, request_id: str) -> GrammarMatcher | None:
        return self._matchers.get(request_id)

    @property
    def any_constrained(self) -> bool:
        return bool(self._matchers)

    def sampling_row(self, seq: Sequence, output_token_ids: list[int] | None = None,
                     with_history: bool = True) -> SamplingRow:
        """The sampler's view of ``seq``'s next token. ``output_token_ids``: its outputs with
        any pending token resolved (the overlapped loop); default the sequence's own.
        ``with_history`` False: no token ids for penalties (rows sampled ahead need none)."""
        out = seq.output_token_ids if output_token_ids is None else output_token_ids
        matcher = self._matchers.get(seq.request_id)
        if matcher is not None:
            matcher.catch_up(out)
        return SamplingRow(seq.sampling_params, out if with_history else [],
                           self.generator(seq.request_id),
                           prompt_token_ids=seq.prompt_token_ids if with_history else [],
                           eos_token_ids=seq.eos_token_ids,
                           num_output_tokens=seq.num_output_tokens, matcher=matcher)
