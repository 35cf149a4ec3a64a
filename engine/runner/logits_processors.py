"""What changes a batch's logits before sampling, in OpenAI/vLLM semantics and in this order:
``logit_bias``, ``min_tokens`` (EOS and stop ids at -inf until reached), repetition penalty
(prompt + output), presence/frequency penalties (output), then the grammar's token mask.

The caller's logits are never written: they may be a CUDA graph's output buffer. Rows that
ask for nothing cost nothing; a batch where no row asks for anything is returned as it is.
Host data reaches the device with non-blocking copies (``to_device``); the grammar mask is
filled on the host by the matchers (they must have caught up with the row's tokens).
"""

from __future__ import annotations

import torch

from engine.runner.host_copy import to_device


def process_logits(logits: torch.Tensor, rows) -> torch.Tensor:
    """``rows``: engine.runner.sampler.SamplingRow, one per logits row."""
    out = None

    def writable() -> torch.Tensor:
        nonlocal out
        if out is None:
            out = logits.clone()
        return out

    _logit_bias(writable, rows, logits.device)
    _min_tokens(writable, rows, logits.device)
    for i, row in enumerate(rows):
        p = row.params
        if p.repetition_penalty != 1.0:
            _repetition(writable(), i, row.prompt_token_ids + row.output_token_ids,
                        p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and row.output_token_ids:
            x = writable()
            ids = torch.tensor(row.output_token_ids, device=x.device)
            counts = torch.bincount(ids, minlength=x.shape[1]).to(x.dtype)
            x[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(x.dtype)
    if any(r.matcher is not None for r in rows):
        from engine.structured.bitmask import apply_bitmask, fill_bitmask

        x = writable()
        eos = next((r.eos_token_ids for r in rows if r.eos_token_ids), ())
        apply_bitmask(x, fill_bitmask([r.matcher for r in rows], x.shape[1], eos))
    return logits if out is None else out


def _logit_bias(writable, rows, device: torch.device) -> None:
    row_ids, token_ids, biases = [], [], []
    for i, row in enumerate(rows):
        for token, bias in row.params.logit_bias:
            row_ids.append(i)
            token_ids.append(token)
            biases.append(bias)
    if not row_ids:
        return
    x = writable()
    vocab = x.shape[1]
    keep = [j for j, t in enumerate(token_ids) if t < vocab]  # ids past the vocabulary: no-op
    if not keep:
        return
    index = to_device([[row_ids[j] for j in keep], [token_ids[j] for j in keep]], torch.long,
                      device)
    values = to_device([biases[j] for j in keep], x.dtype, device)
    x.index_put_((index[0], index[1]), values, accumulate=True)


def _min_tokens(writable, rows, device: torch.device) -> None:
    row_ids, token_ids = [], []
    for i, row in enumerate(rows):
        p = row.params
        if p.min_tokens <= row.generated or (row.matcher is not None
                                             and row.matcher.is_stopped()):
            continue  # reached; or the grammar is complete and only EOS can follow
        stops = set(p.stop_token_ids) | (set() if p.ignore_eos else set(row.eos_token_ids))
        row_ids.extend([i] * len(stops))
        token_ids.extend(sorted(stops))
    if not row_ids:
        return
    x = writable()
    index = to_device([row_ids, token_ids], torch.long, device)
    x[index[0], index[1]] = float("-inf")


def _repetition(x: torch.Tensor, row: int, token_ids: list[int], penalty: float) -> None:
    """HF's RepetitionPenaltyLogitsProcessor on one row (each seen token once)."""
    if not token_ids:
        return
    ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long, device=x.device)
    seen = x[row, ids]
    x[row, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
