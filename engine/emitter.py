"""Where a sampled token becomes a ``RequestDelta``: stop rules, text, and the request's end.

Both decode loops (the engine's synchronous step and the overlapped one) report tokens here,
so a request finishes the same way whichever loop produced its last token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.core.scheduler import Scheduler
from engine.core.sequence import FinishReason, Sequence, TokenLogprob
from engine.request_table import RequestTable
from kv_transfer.handle import KVHandle


@dataclass
class RequestDelta:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob] = field(default_factory=list)
    text_delta: str = ""
    finished: bool = False
    finish_reason: FinishReason | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    kv_handle: KVHandle | None = None  # prefill role: where the receiver pulls the prompt KV
    error: str | None = None  # set with FinishReason.ERROR


class TokenEmitter:
    def __init__(self, requests: RequestTable, scheduler: Scheduler):
        self.requests = requests
        self.scheduler = scheduler
        # Prefill role: keeps a finished request's blocks under a lease and returns the
        # handle. Set once the engine has a KV connector; requests with ``hold_kv`` need it.
        self.hold: Callable[[Sequence], KVHandle] | None = None

    def append(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> RequestDelta:
        seq.append_token(token, logprob)
        return self.emit(seq, token, logprob)

    def emit(self, seq: Sequence, token: int, logprob: TokenLogprob | None,
             free_blocks: bool = True) -> RequestDelta:
        """Stop rules, text and the delta for ``token``, the sequence's last. ``free_blocks``
        False: a step still in flight writes the blocks; the caller frees them later."""
        reason = self.scheduler.check_token_stop(seq)
        text = self.requests.text(seq.request_id)
        hide_token = reason == FinishReason.STOP and not seq.sampling_params.ignore_eos
        if not hide_token and text.add_tokens([token]):
            reason = FinishReason.STOP
        elif hide_token and token not in seq.eos_token_ids:
            text.add_tokens([token])  # stop token ids other than EOS stay visible in the text
        delta = RequestDelta(
            seq.request_id,
            [token],
            [logprob] if logprob is not None else [],
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
        )
        if reason is not None:
            hold = seq.hold_kv and reason == FinishReason.LENGTH
            self.scheduler.finish(seq, reason, free_blocks=free_blocks and not hold)
            if hold:
                assert self.hold is not None, "hold_kv is refused without a KV connector"
                delta.kv_handle = self.hold(seq)
            delta.finished, delta.finish_reason = True, reason
        delta.text_delta = text.take_delta(delta.finished, handing_off=delta.kv_handle is not None)
        if delta.finished:
            self.requests.forget(seq.request_id)
        return delta
