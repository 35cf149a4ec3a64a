"""The token mask of one step's constrained rows: filled on the host by the matchers, copied
to the device without waiting, applied to the logits there with torch ops.

The bitmask is llguidance's layout: int32 words, bit ``t % 32`` of word ``t // 32`` set when
token ``t`` is allowed. Rows without a grammar stay all ones. The mask is applied to the
logits a CUDA graph returned (after the graph, on a copy), so graphs need nothing of it.
EOS is in a row's mask only when its grammar accepts (the library's rule): a constrained
request ends exactly when its output is complete.
"""

from __future__ import annotations

import torch

from engine.runner.host_copy import to_device
from engine.structured.matcher import GrammarMatcher

_PARALLEL_FROM_ROWS = 4  # below this, one thread fills the rows faster than the pool
_executor = None


def _parallel_executor():
    global _executor
    if _executor is None:
        import llguidance

        _executor = llguidance.LLExecutor()
    return _executor


def fill_bitmask(matchers: list[GrammarMatcher | None], vocab_size: int,
                 eos_token_ids: tuple[int, ...]) -> torch.Tensor:
    """[B, ceil(V / 32)] int32 on the host (pinned when CUDA is present); each matcher
    must have caught up with its row's tokens."""
    words = (vocab_size + 31) // 32
    mask = torch.full((len(matchers), words), -1, dtype=torch.int32,
                      pin_memory=torch.cuda.is_available())
    live = []
    for row, m in enumerate(matchers):
        if m is None:
            continue
        if m.failed:  # only EOS: the request ends at its next token
            mask[row] = 0
            for eos in eos_token_ids:
                mask[row, eos // 32] |= _bit(eos)
            continue
        live.append((m.llg, row))
    if len(live) >= _PARALLEL_FROM_ROWS:
        _parallel_executor().unsafe_compute_mask_ptr(live, mask.data_ptr(), words * 4,
                                                     len(matchers))
    else:
        for llg, row in live:
            v = mask[row]
            llg.unsafe_compute_mask_ptr(v.data_ptr(), words * 4)
    return mask


def _bit(token: int) -> int:
    bit = 1 << (token % 32)
    return bit - (1 << 32) if bit >= 1 << 31 else bit  # as a signed int32


_SHIFTS: dict[torch.device, torch.Tensor] = {}


def apply_bitmask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits`` [B, V] with disallowed tokens at -inf, in place; ``mask`` on the host
    (copied to the device without a host wait)."""
    device = logits.device
    mask = mask.to(device, non_blocking=True) if device.type == "cuda" else mask
    shifts = _SHIFTS.get(device)
    if shifts is None:
        shifts = _SHIFTS[device] = to_device(list(range(32)), torch.int32, device)
    vocab = logits.shape[1]
    allowed = ((mask[:, :, None] >> shifts) & 1).view(mask.shape[0], -1)[:, :vocab]
    return logits.masked_fill_(allowed == 0, float("-inf"))
