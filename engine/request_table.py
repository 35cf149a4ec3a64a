"""The requests an engine serves, by id: each one's sequence, text output and generator."""

from __future__ import annotations

import torch

from engine.core.sequence import Sequence
from engine.text.output_processor import TextOutput
from engine.text.tokenizer import Tokenizer


class RequestTable:
    """What the engine keeps per live request besides the scheduler's view of it: the
    ``Sequence``, its ``TextOutput`` (detokenizer, stop strings) and, for a seeded request,
    its own random generator. A request is here from ``track`` until ``forget``."""

    def __init__(self, tokenizer: Tokenizer | None, device: torch.device):
        self.tokenizer = tokenizer
        self.device = device
        self.seqs: dict[str, Sequence] = {}
        self._text: dict[str, TextOutput] = {}
        self._generators: dict[str, torch.Generator] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.seqs

    def get(self, request_id: str) -> Sequence | None:
        return self.seqs.get(request_id)

    def track(self, seq: Sequence) -> None:
        self.seqs[seq.request_id] = seq
        self._text[seq.request_id] = TextOutput(self.tokenizer, seq.sampling_params)
        if seq.sampling_params.seed is not None:
            gen = torch.Generator(device=self.device)
            self._generators[seq.request_id] = gen.manual_seed(seq.sampling_params.seed)

    def forget(self, request_id: str) -> None:
        self.seqs.pop(request_id, None)
        self._text.pop(request_id, None)
        self._generators.pop(request_id, None)

    def text(self, request_id: str) -> TextOutput:
        return self._text[request_id]

    def generator(self, request_id: str) -> torch.Generator | None:
        """The request's own generator (it has a seed), else None: the sampler's default."""
        return self._generators.get(request_id)
