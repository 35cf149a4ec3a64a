"""A request's sampling parameters and output budget, from an API body (the OpenAI routes and
the Anthropic one share it)."""

from __future__ import annotations

from common.sampling_params import SamplingParams
from router.errors import bad_request, unavailable
from router.structured_map import sampling_extras


def context_limit(state) -> int:
    limit = state.max_model_len()
    if limit is None:
        raise unavailable("no decode worker is available", retry_after_s=2)
    return limit


def sampling(body, state, prompt_len: int, max_tokens: int | None, logprobs: int | None,
             prompt_param: str = "messages", **extra) -> SamplingParams:
    """``prompt_param``: the field a prompt too long for the context by itself is blamed on
    (``max_tokens`` is, when the prompt fits and the completion does not)."""
    limit = context_limit(state)
    if max_tokens is None:  # the rest of the context, capped by --max-tokens-default
        max_tokens = limit - prompt_len
        if state.config.max_tokens_default > 0:
            max_tokens = min(max_tokens, state.config.max_tokens_default)
    if prompt_len + max_tokens > limit or max_tokens < 1:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} in the "
            f"completion). Please reduce the length of the prompt or completion.",
            param="max_tokens" if prompt_len < limit else prompt_param,
            code="context_length_exceeded")
    fields = sampling_extras(body, state.model.vocab_size, max_tokens)
    if extra.get("structured") is not None and fields["structured"] is not None:
        raise bad_request("response_format cannot be combined with a forced tool_choice "
                          "(required or a named function): both constrain the output",
                          param="response_format")
    fields.update({k: v for k, v in extra.items() if v is not None or k != "structured"})
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0, seed=body.seed, stop=tuple(body.stop_list()),
            ignore_eos=body.ignore_eos,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0, logprobs=logprobs, **fields)
    except ValueError as e:
        raise bad_request(str(e)) from None
