"""Per-request sampling parameters (OpenAI semantics), validated at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.structured_output import StructuredOutput

MAX_LOGPROBS = 20  # OpenAI's limit for top_logprobs
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values: [-100, 100]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables top-k
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: none; k >= 0: chosen token plus the top k
    skip_special_tokens: bool = True
    # The grammar the output must follow (response_format, forced tool calls); None: free.
    structured: StructuredOutput | None = None
    # (token id, bias) pairs added to the logits before sampling (OpenAI logit_bias); a dict
    # is accepted and kept as sorted pairs so the object stays hashable.
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    min_tokens: int = 0  # EOS and stop_token_ids are masked until this many are generated
    # HF/vLLM semantics over prompt + output tokens: a seen token's logit is divided by it
    # when positive, multiplied when negative; 1 disables.
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        # Accept lists from callers; keep the frozen object hashable.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias",
                           tuple(sorted((int(t), float(b)) for t, b in bias)))
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            problems.append(f"top_k must be -1, 0 (disabled) or positive, got {self.top_k}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:
                problems.append(f"{name} must be in [-2, 2], got {value}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            problems.append(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if any(not -MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS for _, b in self.logit_bias):
            problems.append(f"logit_bias values must be in [-{MAX_LOGIT_BIAS:g}, "
                            f"{MAX_LOGIT_BIAS:g}]")
        if any(t < 0 for t, _ in self.logit_bias):
            problems.append("logit_bias token ids must be non-negative")
        if self.min_tokens < 0:
            problems.append(f"min_tokens must be non-negative, got {self.min_tokens}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            problems.append(f"repetition_penalty must be in (0, 2], got "
                            f"{self.repetition_penalty}")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        """Penalties that need the request's token ids (output, or prompt + output)."""
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)
