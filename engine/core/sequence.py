"""A request's state inside the engine: one object with counters (no tensors)."""

from __future__ import annotations

import enum
import time

from common.outputs import FinishReason, TokenLogprob  # the engine imports them from here too
from common.sampling_params import SamplingParams
from kv_transfer.block_hash import BlockHash

# Overlapped decode (engine/overlap.py): a sampled token still on the device, not a token id.
PENDING_TOKEN = -1


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    WAITING_FOR_KV = "waiting_for_kv"  # prefilled elsewhere; its KV is being pulled
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        extra_keys: tuple[str, ...] = (),
        eos_token_ids: tuple[int, ...] = (),
    ):
        if not prompt_token_ids:
            raise ValueError("the prompt must contain at least one token")
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.all_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.extra_keys = extra_keys  # enter every block hash (e.g. a tenant's cache salt)
        self.eos_token_ids = eos_token_ids
        self.arrival_time = time.monotonic()
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache (first admission)
        self.block_ids: list[int] = []
        self.block_hashes: list[BlockHash] = []  # of the full blocks computed so far
        self.output_logprobs: list[TokenLogprob] = []
        self.finish_reason: FinishReason | None = None
        self.num_preemptions = 0
        self.admitted_once = False
        self.hold_kv = False  # prefill role: keep the blocks for a receiver when done
        self.error: str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def append_token(self, token_id: int, logprob: TokenLogprob | None) -> None:
        self.all_token_ids.append(token_id)
        if logprob is not None:
            self.output_logprobs.append(logprob)

    @property
    def has_pending_token(self) -> bool:
        return self.all_token_ids[-1] == PENDING_TOKEN

    def append_pending_token(self) -> None:
        self.all_token_ids.append(PENDING_TOKEN)

    def resolve_pending_token(self, token_id: int) -> None:
        assert self.has_pending_token
        self.all_token_ids[-1] = token_id

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: forget computed KV; prompt + outputs are recomputed."""
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.block_ids = []
        self.block_hashes = []
        self.num_preemptions += 1

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, status={self.status.value}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, blocks={len(self.block_ids)})"
        )
