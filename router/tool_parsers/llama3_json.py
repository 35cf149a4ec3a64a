"""Llama 3.1 / 3.2 / 3.3 JSON tool calls: the whole answer is ``{"name": "f", "parameters":
{...}}`` (after an optional ``<|python_tag|>``), several separated by ``;``. Only an answer
that starts with one is a call: the start is held back until its first character shows
which."""

from __future__ import annotations

from router.output_deltas import Content, Delta
from router.tool_parsers.base import ToolParser
from router.tool_parsers.json_stream import CallReader

_PYTHON_TAG = "<|python_tag|>"


class Llama3JsonParser(ToolParser):
    name = "llama3_json"

    def __init__(self):
        super().__init__()
        self._buf = ""
        self._state = "start"  # start -> (call -> between)* -> text
        self._reader: CallReader | None = None

    def feed(self, text: str) -> list[Delta]:
        self._buf += text
        out: list[Delta] = []
        while True:
            if self._state == "text":
                out.append(Content(self._buf))
                self._buf = ""
                return out
            if self._state == "call":
                text, self._buf = self._buf, ""
                out += self._reader.feed(text)
                if self._reader.failed is not None:
                    self._buf, self._state = self._reader.failed + self._reader.rest, "text"
                    continue
                if not self._reader.done:
                    return out
                self._buf, self._state = self._reader.rest, "between"
                continue
            stripped = self._buf.lstrip()
            if self._state == "start" and stripped.startswith(_PYTHON_TAG):
                self._buf = stripped = stripped[len(_PYTHON_TAG):]
            if self._state == "between":
                stripped = stripped.lstrip(";").lstrip()
            if not stripped or self._state == "start" and _PYTHON_TAG.startswith(stripped):
                return out  # undecided yet
            if stripped[0] == "{":
                self._buf, self._state = stripped, "call"
                self._reader = CallReader(self.start_call)
            else:
                self._state = "text"
                if self.num_calls:
                    self._buf = stripped

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self._state == "call":
            self._reader.finish()
            if self._reader.failed is not None:
                out.append(Content(self._reader.failed))
        elif self._state in ("start", "text"):
            out.append(Content(self._buf))
        self._buf = ""
        return out
