"""Reading tool calls written as JSON while the text streams in: where a JSON value ends
(``JsonScanner``), one ``{"name": ..., "arguments": ...}`` object (``CallReader``) and an array
of them (``CallArrayReader``).

A call is announced (``CallStart``) as soon as its head ``{"name": "f", "arguments":`` is
complete, and its arguments stream out as their raw JSON text. An object whose keys come in
another order is read whole and announced when it closes. What is decided depends only on the
text so far, never on how it was split into chunks, so a stream's deltas add up to exactly
what the whole text gives (tests/unit/test_tool_parsers.py splits at every character)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from router.output_deltas import CallArgs, CallStart, Delta

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"'
                   r'\s*:')
_HEAD_LIMIT_CHARS = 4096  # a head not complete by then is read whole
_CLOSERS = {"{": "}", "[": "]"}

StartCall = Callable[[str], CallStart]  # name -> the announced call (index and id assigned)


class JsonScanner:
    """Finds the end of one JSON value; leading whitespace is skipped, not part of it."""

    def __init__(self):
        self.started = False
        self.done = False
        self.first = ""
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, text: str) -> tuple[str, str | None]:
        """(the part of ``text`` in the value, the text after the value or None if it goes
        on)."""
        start = 0
        for i, ch in enumerate(text):
            if not self.started:
                if ch.isspace():
                    start = i + 1
                    continue
                self.started, self.first = True, ch
                if ch == '"':
                    self._in_string = True
                elif ch in _CLOSERS:
                    self._depth = 1
                continue
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
                    if self._depth == 0:
                        return self._end(text, start, i + 1)
                continue
            if self.first not in _CLOSERS:  # a number, true, false or null
                if ch in ",}]" or ch.isspace():
                    return self._end(text, start, i)
                continue
            if ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return self._end(text, start, i + 1)
        return text[start:], None

    def _end(self, text: str, start: int, end: int) -> tuple[str, str]:
        self.done = True
        return text[start:end], text[end:]


class CallReader:
    """One call object. After ``feed``: ``done`` once the object closed (``rest`` is the text
    after it); ``failed`` holds the raw text if it closed and was not a call."""

    def __init__(self, start_call: StartCall):
        self._start_call = start_call
        self._outer = JsonScanner()
        self._args: JsonScanner | None = None
        self._string_args = ""  # arguments sent as a JSON string: decoded at their end
        self._index: int | None = None
        self._head = ""
        self._raw = ""  # everything read, whitespace included: the text of a failed call
        self.done = False
        self.rest = ""
        self.failed: str | None = None

    def feed(self, text: str) -> list[Delta]:
        part, rest = self._outer.feed(text)
        self._raw += text if rest is None else text[:len(text) - len(rest)]
        out: list[Delta] = []
        if self._index is None:
            self._head += part
            m = _HEAD.match(self._head[:_HEAD_LIMIT_CHARS])
            if m:
                out.append(self._announce(_json_string(m.group(1))))
                out += self._feed_args(self._head[m.end():])
        else:
            out += self._feed_args(part)
        if rest is not None:
            self.done, self.rest = True, rest
            if self._index is None:
                out += self._whole(self._head)
        return out

    def finish(self) -> list[Delta]:
        """The text ended inside the object: what was announced stays; else it is not a
        call."""
        if self._index is None:
            self.failed = self._raw
        return []

    def _announce(self, name: str) -> CallStart:
        call = self._start_call(name)
        self._index = call.index
        self._args = JsonScanner()
        return call

    def _feed_args(self, text: str) -> list[Delta]:
        if self._args.done or not text:
            return []
        part, _ = self._args.feed(text)
        if self._args.first == '"':
            self._string_args += part
            if not self._args.done:
                return []
            try:
                part = json.loads(self._string_args)
            except ValueError:
                part = self._string_args
        return [CallArgs(self._index, part)] if part else []

    def _whole(self, text: str) -> list[Delta]:
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        args = None
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            args = obj.get("arguments", obj.get("parameters"))
        if args is None:
            self.failed = self._raw
            return []
        call = self._start_call(obj["name"])
        self._index = call.index
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return [call, CallArgs(call.index, text)]


def _json_string(body: str) -> str:
    try:
        return json.loads(f'"{body}"')
    except ValueError:
        return body


class CallArrayReader:
    """``[call, call, ...]``, as Mistral writes them and as ``tool_choice: required`` forces
    them. ``failed`` is set if the text is not such an array (what was read is in it)."""

    def __init__(self, start_call: StartCall):
        self._start_call = start_call
        self._state = "open"  # open -> item -> sep -> (item | done)
        self._item: CallReader | None = None
        self._seen = ""
        self.done = False
        self.rest = ""
        self.failed: str | None = None

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        while text and not self.done and self.failed is None:
            if self._state == "item":
                out += self._item.feed(text)
                if not self._item.done:
                    return out
                if self._item.failed is not None:
                    self.failed = self._seen + self._item.failed
                    return out
                text, self._state = self._item.rest, "sep"
                continue
            stripped = text.lstrip()
            if not stripped:
                return out
            ch, text = stripped[0], stripped[1:]
            self._seen += ch
            if self._state == "open" and ch == "[" or self._state == "sep" and ch == ",":
                self._state, self._item = "item", CallReader(self._start_call)
            elif self._state == "sep" and ch == "]":
                self.done, self.rest = True, text
            else:
                self.failed = self._seen + text
        return out

    def finish(self) -> list[Delta]:
        if self._state == "item" and not self._item.done:
            self._item.finish()
            if self._item.failed is not None and self.failed is None:
                self.failed = self._seen + self._item.failed
        return []
