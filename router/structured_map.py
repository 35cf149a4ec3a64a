"""OpenAI's output-shaping fields as SamplingParams: ``response_format`` (json_object,
json_schema) as a ``StructuredOutput``, checked here by the constrained-decoding library
itself (llguidance is torch-free: common/grammar.py), so a schema it rejects is a 400 with its
reason before any worker is asked; ``logit_bias``, ``min_tokens``, ``repetition_penalty`` and
``include_stop_str_in_output`` as they are."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from common.grammar import GrammarError, check_structured, grammar_problem, is_checked
from common.structured_output import StructuredOutput
from router.errors import bad_request


async def precheck(specs: list[StructuredOutput | None]) -> None:
    """The grammar library's checks of ``specs`` in a thread, before the request makes them
    on the event loop: a large or recursive schema takes the library ms to tens of ms (27 ms
    for an object that requires itself, measured here), once per spec, as
    ``grammar_problem`` caches its answers; the checks made after are lookups."""
    specs = [s for s in specs if s is not None and not is_checked(s)]
    if specs:  # else: lookups, no thread hop (~0.1 ms)
        await asyncio.to_thread(lambda: [grammar_problem(s) for s in specs])


def requested_structured(body) -> StructuredOutput | None:
    """The grammar ``response_format`` asks for, unchecked (None: free text, or a
    ``json_schema`` without its schema, which ``structured_output`` refuses)."""
    fmt = getattr(body, "response_format", None)
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return StructuredOutput("json_object", "")
    if fmt.json_schema is None:
        return None
    # property order kept: it is the output order
    return StructuredOutput("json_schema", json.dumps(fmt.json_schema.schema_))


def structured_output(body) -> StructuredOutput | None:
    """The grammar ``response_format`` asks for (None: free text). Raises a 400 naming
    ``response_format`` with the library's reason when it refuses the schema."""
    structured = requested_structured(body)
    if structured is None:
        fmt = getattr(body, "response_format", None)
        if fmt is not None and fmt.type == "json_schema":
            raise bad_request("response_format of type 'json_schema' needs a 'json_schema' "
                              "object with a 'schema'", param="response_format.json_schema")
        return None
    try:
        check_structured(structured)
    except GrammarError as e:
        raise bad_request(str(e), param="response_format", code="invalid_schema") from None
    return structured


def sampling_extras(body, vocab_size: int | None, max_tokens: int) -> dict[str, Any]:
    """SamplingParams keyword arguments for the fields above (raises 400s)."""
    bias = {int(k): v for k, v in (body.logit_bias or {}).items()}
    if vocab_size is not None:
        bad = next((t for t in bias if t >= vocab_size), None)
        if bad is not None:
            raise bad_request(f"logit_bias token ids must be below the vocabulary size "
                              f"{vocab_size}; got {bad}", param="logit_bias")
    min_tokens = body.min_tokens or 0
    if min_tokens > max_tokens:
        raise bad_request(f"min_tokens ({min_tokens}) must not exceed max_tokens "
                          f"({max_tokens})", param="min_tokens")
    return {
        "structured": structured_output(body),
        "logit_bias": bias,
        "min_tokens": min_tokens,
        "repetition_penalty": 1.0 if body.repetition_penalty is None else body.repetition_penalty,
        "include_stop_str_in_output": body.include_stop_str_in_output,
    }
