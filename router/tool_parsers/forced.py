"""Reading output that grammar-constrained decoding forced to be calls (``tool_choice``
``required`` or a named function), as vLLM does it: for a named function the output is its
arguments object; for ``required`` a JSON array of ``{"name", "parameters"}`` objects, one per
call. ``schema_for_required`` and ``schema_for_named`` are the grammars."""

from __future__ import annotations

import json

from router.output_deltas import CallArgs, Content, Delta
from router.tool_parsers.base import ToolParser
from router.tool_parsers.json_stream import CallArrayReader

_ANY_OBJECT = {"type": "object"}


def _parameters(tool: dict) -> dict:
    return tool["function"].get("parameters") or _ANY_OBJECT


def schema_for_named(tool: dict) -> str:
    return json.dumps(_parameters(tool))


def schema_for_required(tools: list[dict], parallel: bool) -> str:
    calls = [{"type": "object",
              "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                             "parameters": _parameters(t)},
              "required": ["name", "parameters"], "additionalProperties": False}
             for t in tools]
    schema = {"type": "array", "minItems": 1, "items": {"anyOf": calls}}
    if not parallel:
        schema["maxItems"] = 1
    return json.dumps(schema)


class NamedParser(ToolParser):
    """The whole output is the arguments of the one function."""

    name = "named"

    def __init__(self, function: str):
        super().__init__()
        self._function = function
        self._index: int | None = None

    def _started(self) -> list[Delta]:
        if self._index is not None:
            return []
        call = self.start_call(self._function)
        self._index = call.index
        return [call]

    def feed(self, text: str) -> list[Delta]:
        return [*self._started(), CallArgs(self._index, text)] if text else []

    def finish(self) -> list[Delta]:
        return self._started()


class RequiredParser(ToolParser):
    """The output is a JSON array of calls."""

    name = "required"

    def __init__(self):
        super().__init__()
        self._reader = CallArrayReader(self.start_call)
        self._tail = ""

    def feed(self, text: str) -> list[Delta]:
        if self._reader.done or self._reader.failed is not None:
            self._tail += text
            return []
        return self._reader.feed(text)

    def finish(self) -> list[Delta]:
        out = self._reader.finish()
        if self._reader.failed is not None and self.num_calls == 0:
            out.append(Content(self._reader.failed + self._tail))
        return out
