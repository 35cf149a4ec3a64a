"""What a request's output is made of, shared by the engine, the wire conversions and the
router (torch-free): why a request finished and the log-probability of a chosen token."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"
    ERROR = "error"  # the request could not be served (e.g. its KV transfer failed)


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the top alternatives (OpenAI ``logprobs``)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)
