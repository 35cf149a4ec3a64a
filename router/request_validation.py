"""Turning what the schema saw into OpenAI-shaped 400s: validation errors with the offending
``param``, and fields the schema does not know (refused by name, or ignored with one warning
per field name when the router runs with ``--lenient``)."""

from __future__ import annotations

import logging
import re

from pydantic import BaseModel

from router.errors import APIError, bad_request
from router.openai_schema import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

_NOTHING = object()  # "any value is inert" marker

# Fields we do not implement, each with the values that ask for nothing we do not do (sent
# explicitly by common clients); null is always inert. See router/openai_schema.py.
INERT_VALUES: dict[str, tuple] = {
    "store": (False,),
    "modalities": (["text"],),
    "stop_token_ids": ([],),
    "best_of": (1,),
}
STREAM_OPTIONS_INERT: dict[str, tuple] = {}
MESSAGE_INERT: dict[str, tuple] = {}
_KNOWN_UNSUPPORTED = {*INERT_VALUES, *STREAM_OPTIONS_INERT, *MESSAGE_INERT}

_warned: set[str] = set()  # field names already warned about (--lenient), once per process


def _same(value, default) -> bool:
    if default is _NOTHING:
        return True
    if isinstance(value, bool) != isinstance(default, bool):
        return False  # True is not 1 here
    numbers = type(value) in (int, float) and type(default) in (int, float)
    return (numbers or type(value) is type(default)) and value == default


def _inert(value, table: dict[str, tuple], name: str) -> bool:
    return value is None or any(_same(value, d) for d in table.get(name, ()))


def _extras(model: BaseModel, table: dict[str, tuple], prefix: str):
    for name, value in (model.model_extra or {}).items():
        if not _inert(value, table, name):
            yield f"{prefix}{name}", name


def unsupported_fields(body: ChatCompletionRequest | CompletionRequest) -> list[tuple[str, str]]:
    """(param path, field name) of every field that asks for something we do not do."""
    found = list(_extras(body, INERT_VALUES, ""))
    if body.stream_options is not None:
        found += _extras(body.stream_options, STREAM_OPTIONS_INERT, "stream_options.")
    messages = body.messages if isinstance(body, ChatCompletionRequest) else ()
    for i, m in enumerate(messages):
        found += _extras(m, MESSAGE_INERT, f"messages.{i}.")
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                found += _extras(part, {}, f"messages.{i}.content.{j}.")
    return found


def _shown(name: str) -> str:
    name = name if len(name) <= 64 else name[:64] + "…"
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def refuse_unsupported(body: ChatCompletionRequest | CompletionRequest, lenient: bool) -> None:
    found = unsupported_fields(body)
    if not found:
        return
    if lenient:
        for path, _name in found:
            key = re.sub(r"\.\d+\.", ".", path)
            if key not in _warned:
                _warned.add(key)
                log.warning("ignoring request field %r, which pdserve does not implement "
                            "(--lenient; warned once per field)", _shown(key))
        return
    path, name = found[0]
    hint = ("send its default value or leave it out, or start the router with --lenient to "
            "ignore such fields")
    if name in _KNOWN_UNSUPPORTED:
        raise APIError(400, f"Unsupported parameter: '{_shown(path)}' is not implemented by "
                       f"pdserve yet; {hint}.", param=_shown(path), code="unsupported_parameter")
    raise APIError(400, f"Unknown parameter: '{_shown(path)}'; {hint}.", param=_shown(path),
                   code="unknown_parameter")


def refuse_contradictions(body: ChatCompletionRequest | CompletionRequest) -> None:
    """Fields that are valid alone but ask for nothing as sent (OpenAI refuses each): a 400
    naming the field rather than silently doing without it."""
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true",
                          param="stream_options")
    if (isinstance(body, ChatCompletionRequest) and body.top_logprobs
            and not body.logprobs):
        raise bad_request("top_logprobs needs logprobs set to true", param="top_logprobs")
    fmt = body.response_format
    if fmt is not None and fmt.type != "json_schema" and fmt.json_schema is not None:
        raise bad_request(f"response_format.json_schema is only read with type "
                          f"'json_schema', not {fmt.type!r}",
                          param="response_format.json_schema")


def _param(loc) -> str | None:
    """``('body', 'messages', 0, 'content')`` -> ``messages.0.content``; pydantic's union-branch
    tags (``function-after[...]``, ``list[int]``) are not fields, so they are dropped."""
    parts = [str(p) for p in loc[1:] if isinstance(p, int) or re.fullmatch(r"\w+", str(p))]
    return ".".join(parts) or None


def validation_error(errors: list[dict]) -> APIError:
    if any(e.get("type") == "json_invalid" for e in errors):
        return bad_request("the request body is not valid JSON")

    def msg(e: dict) -> str:
        text = str(e.get("msg", "invalid"))
        return text.removeprefix("Value error, ").removeprefix("Assertion failed, ")

    details = "; ".join(f"{_param(e.get('loc', ())) or 'body'}: {msg(e)}" for e in errors[:5])
    first = errors[0] if errors else {}
    return bad_request(f"invalid request: {details}", param=_param(first.get("loc", ())))
