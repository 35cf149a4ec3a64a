"""Offline API in the spirit of vLLM's: ``LLM(model=...).generate(prompts, SamplingParams())``."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from common.sampling_params import SamplingParams
from engine.config import EngineConfig
from engine.core.sequence import FinishReason, TokenLogprob
from engine.llm_engine import LLMEngine


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    num_cached_tokens: int = 0


class LLM:
    """Owns an engine; ``generate`` runs requests to completion as one continuous batch."""

    def __init__(self, model: str = "demo", **engine_kwargs: Any):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_kwargs))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: str | Seq[str] | Seq[int] | Seq[Seq[int]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        prompt_ids = self._to_token_ids(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompt_ids)
        outputs: dict[str, RequestOutput] = {}
        order = []
        for ids, params in zip(prompt_ids, sampling_params, strict=True):
            rid = self.engine.add_request(ids, params)
            outputs[rid] = RequestOutput(rid, ids)
            order.append(rid)
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(order), desc="generating", unit="req")
        while self.engine.has_unfinished():
            for delta in self.engine.step():
                out = outputs[delta.request_id]
                out.token_ids.extend(delta.new_token_ids)
                out.logprobs.extend(delta.new_logprobs)
                out.text += delta.text_delta
                out.num_cached_tokens = delta.num_cached_tokens
                if delta.finished:
                    out.finish_reason = delta.finish_reason
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [outputs[rid] for rid in order]

    def chat(
        self,
        messages: Seq[dict[str, Any]] | Seq[Seq[dict[str, Any]]],
        sampling_params: SamplingParams | None = None,
    ) -> list[RequestOutput]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids to generate()")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [self.tokenizer.encode_chat(conv) for conv in conversations]
        return self.generate(prompts, sampling_params)

    def _to_token_ids(self, prompts) -> list[list[int]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        elif prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        out = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("this model has no tokenizer; pass token ids")
                out.append(self.tokenizer.encode(p))
            else:
                out.append(list(p))
        return out

    def shutdown(self) -> None:
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

