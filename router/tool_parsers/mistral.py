"""Mistral tool calls: ``[TOOL_CALLS]`` then a JSON array of ``{"name", "arguments"}``
objects (tokenizers up to v7), or ``[TOOL_CALLS]name[ARGS]{...}`` per call (v11 and later).
``[TOOL_CALLS]`` is a control token, so detokenizing must keep special tokens; Mistral's
templates want call ids of 9 letters and digits."""

from __future__ import annotations

import secrets

from router.output_deltas import CallArgs, Delta
from router.tool_parsers.base import _ALNUM, MarkerParser, held_prefix
from router.tool_parsers.json_stream import CallArrayReader, JsonScanner

_ARGS = "[ARGS]"
_MAX_NAME_CHARS = 256


class MistralParser(MarkerParser):
    name = "mistral"
    start = "[TOOL_CALLS]"
    needs_special_tokens = True

    def new_id(self) -> str:
        return "".join(secrets.choice(_ALNUM) for _ in range(9))

    def reader(self):
        return _EitherReader(self)


class _EitherReader:
    """An array of calls, or one ``name[ARGS]{...}``, decided by the first character."""

    def __init__(self, parser: MistralParser):
        self._parser = parser
        self._inner = None
        self.done = False
        self.rest = ""
        self.failed: str | None = None

    def feed(self, text: str) -> list[Delta]:
        if self._inner is None:
            stripped = text.lstrip()
            if not stripped:
                return []
            if stripped[0] == "[":
                self._inner = CallArrayReader(self._parser.start_call)
            else:
                self._inner = _NamedArgsReader(self._parser)
            text = stripped
        out = self._inner.feed(text)
        self.done, self.rest, self.failed = self._inner.done, self._inner.rest, \
            self._inner.failed
        return out

    def finish(self) -> list[Delta]:
        if self._inner is None:
            self.failed = ""
            return []
        out = self._inner.finish()
        self.failed = self._inner.failed
        return out


class _NamedArgsReader:
    def __init__(self, parser: MistralParser):
        self._parser = parser
        self._name = ""
        self._args: JsonScanner | None = None
        self._index = 0
        self.done = False
        self.rest = ""
        self.failed: str | None = None

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        if self._args is None:
            self._name += text
            i = self._name.find(_ARGS)
            if i < 0:
                if len(self._name) - held_prefix(self._name, _ARGS) > _MAX_NAME_CHARS:
                    self.failed = self._name
                return out
            name, text = self._name[:i].strip(), self._name[i + len(_ARGS):]
            if not name or any(c.isspace() for c in name):
                self.failed = self._name
                return out
            call = self._parser.start_call(name)
            self._index, self._args = call.index, JsonScanner()
            out.append(call)
        part, rest = self._args.feed(text)
        if part:
            out.append(CallArgs(self._index, part))
        if rest is not None:
            self.done, self.rest = True, rest
        return out

    def finish(self) -> list[Delta]:
        if self._args is None:
            self.failed = self._name
        return []
