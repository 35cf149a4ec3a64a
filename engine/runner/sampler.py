"""Turn a batch of logits into next tokens: penalties, temperature, top-k, top-p, seeds,
and OpenAI-style logprobs (log-softmax of the model's raw distribution).

Sampling uses the exponential race (argmax of p / q with q ~ Exp(1)), which draws from the
same distribution as multinomial sampling without a cumulative-sum search and needs one
noise vector per row, so a per-request seed is just a per-row generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from common.sampling_params import SamplingParams
from engine.core.sequence import TokenLogprob
from engine.runner.host_copy import to_device
from engine.runner.logits_processors import process_logits


@dataclass
class SamplingRow:
    params: SamplingParams
    output_token_ids: list[int]  # for penalties and the grammar (may be [] where unused)
    generator: torch.Generator | None  # set for seeded requests
    prompt_token_ids: list[int] = field(default_factory=list)  # for repetition_penalty
    eos_token_ids: tuple[int, ...] = ()  # masked until min_tokens
    num_output_tokens: int | None = None  # tokens generated so far; None: output_token_ids'
    matcher: object | None = None  # engine.structured.matcher.GrammarMatcher, caught up

    @property
    def generated(self) -> int:
        if self.num_output_tokens is not None:
            return self.num_output_tokens
        return len(self.output_token_ids)


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> tuple[list[int], list[TokenLogprob | None]]:
    """logits: [B, V] (any float dtype). Returns token ids and, per row, logprobs or None."""
    assert logits.shape[0] == len(rows)
    logits = logits.float()
    want_logprobs = [r.params.logprobs is not None for r in rows]
    raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None
    token_list = sample_tokens(logits, rows).tolist()
    logprob_list: list[TokenLogprob | None] = [None] * len(rows)
    if raw_logprobs is not None:
        for i, row in enumerate(rows):
            k = row.params.logprobs
            if k is None:
                continue
            chosen = float(raw_logprobs[i, token_list[i]])
            top = []
            if k > 0:
                values, ids = raw_logprobs[i].topk(k)
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
            logprob_list[i] = TokenLogprob(token_list[i], chosen, top)
    return token_list, logprob_list


def samples_on_device(params: SamplingParams) -> bool:
    """Whether a row's next token needs nothing from the host but its logits and what the
    host knows ahead (no penalty over its token ids, no logprobs to report; logit_bias and
    min_tokens are known ahead; a grammar is handled by the overlapped loop itself): such
    rows can be sampled ahead."""
    return not params.has_penalties and params.logprobs is None


def sample_tokens(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The next token of every row, as a device tensor [B]; no host sync unless a row has
    penalties (their output ids are copied up)."""
    logits = process_logits(logits.float(), rows)
    tokens = logits.argmax(dim=-1)
    if all(r.params.greedy for r in rows):
        return tokens
    greedy = to_device([r.params.greedy for r in rows], torch.bool, logits.device)
    return torch.where(greedy, tokens, _random_sample(logits, rows))


def _random_sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    device = logits.device
    temps = to_device([max(r.params.temperature, 1e-5) for r in rows], torch.float32, device)
    logits = logits / temps[:, None]
    vocab = logits.shape[1]
    top_ks = [r.params.top_k if r.params.top_k > 0 else vocab for r in rows]
    top_ps = [r.params.top_p for r in rows]
    if any(k < vocab for k in top_ks) or any(p < 1.0 for p in top_ps):
        logits = _top_k_top_p(logits, top_ks, top_ps)
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs)
    for i, row in enumerate(rows):
        noise[i].exponential_(generator=row.generator)
    return (probs / noise).argmax(dim=-1)


def _top_k_top_p(logits: torch.Tensor, top_ks: list[int], top_ps: list[float]) -> torch.Tensor:
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[1]
    k = to_device(top_ks, torch.long, logits.device)
    positions = torch.arange(vocab, device=logits.device)[None, :]
    mask = positions >= k[:, None]
    p = to_device(top_ps, torch.float32, logits.device)
    probs = torch.softmax(sorted_logits.masked_fill(mask, float("-inf")), dim=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
    mass_before = probs.cumsum(dim=-1) - probs
    mask |= mass_before >= p[:, None]
    sorted_logits = sorted_logits.masked_fill(mask, float("-inf"))
    return torch.empty_like(logits).scatter_(1, sorted_idx, sorted_logits)
