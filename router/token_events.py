"""What the dispatcher yields to the API layer for one request (``TokenEvent``), and how a
decode worker's outputs become one: everything queued for a request since its consumer last
looked, as one event."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.outputs import TokenLogprob
from proto import pb
from proto.convert import logprob_from_pb


@dataclass
class TokenEvent:
    token_ids: list[int]
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0


def merge_outputs(outputs: list[pb.RequestOutput]) -> tuple[TokenEvent, str | None]:
    """Everything queued for a request as one event (a consumer behind the stream catches up
    in one step), and the error that ended it there, if one did (its tokens come first)."""
    if len(outputs) == 1 and outputs[0].finish_reason != "error":
        out = outputs[0]  # the common case: one step's output
        # A slice copies upb's repeated field to a list in C (list() iterates it: 4x slower).
        return TokenEvent(out.token_ids[:], out.text,
                          [logprob_from_pb(lp) for lp in out.logprobs] if out.logprobs else [],
                          out.finish_reason or None, num_cached_tokens=out.num_cached_tokens
                          ), None
    event = TokenEvent([], num_cached_tokens=outputs[0].num_cached_tokens)
    texts = []
    for out in outputs:
        if out.finish_reason == "error":
            return _joined(event, texts), out.error or "request failed"
        event.token_ids += out.token_ids[:]
        texts.append(out.text)
        if out.logprobs:
            event.logprobs.extend(logprob_from_pb(lp) for lp in out.logprobs)
        if out.finish_reason:
            event.finish_reason = out.finish_reason
            break
    return _joined(event, texts), None


def _joined(event: TokenEvent, texts: list[str]) -> TokenEvent:
    event.text = "".join(texts)
    return event
