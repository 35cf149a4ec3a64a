"""What every tool-call parser shares: the calls' numbering and ids, and text that streams
through as content except where a marker begins a call. A text that may be the start of a
marker is held back until the next text shows it is not (or the output ends); so is trailing
whitespace, which is dropped when a call follows it."""

from __future__ import annotations

import secrets
import string

from router.output_deltas import CallStart, Content, Delta

_ALNUM = string.ascii_letters + string.digits


def openai_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def held_prefix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolParser:
    """Feed the model's content text as it streams; get content and call deltas back."""

    name = ""
    # Whether the call markers are special tokens that detokenizing must keep.
    needs_special_tokens = False

    def __init__(self):
        self.num_calls = 0

    def new_id(self) -> str:
        return openai_call_id()

    def start_call(self, name: str) -> CallStart:
        call = CallStart(self.num_calls, self.new_id(), name)
        self.num_calls += 1
        return call

    def feed(self, text: str) -> list[Delta]:
        raise NotImplementedError

    def finish(self) -> list[Delta]:
        """The output ended: whatever was held back."""
        raise NotImplementedError


class MarkerParser(ToolParser):
    """Content, then calls that each begin with ``start`` (and end with ``end``, if set), read
    by the reader ``reader()`` returns."""

    start = ""
    end = ""

    def __init__(self):
        super().__init__()
        self._buf = ""
        self._state = "text"  # text -> call -> (close ->) text
        self._reader = None

    def reader(self):
        raise NotImplementedError

    def feed(self, text: str) -> list[Delta]:
        self._buf += text
        out: list[Delta] = []
        while True:
            if self._state == "text":
                i = self._buf.find(self.start)
                if i < 0:
                    head = self._buf[:len(self._buf) - held_prefix(self._buf, self.start)]
                    keep = len(self._buf) - len(head.rstrip())
                    out.append(Content(self._buf[:len(self._buf) - keep]))
                    self._buf = self._buf[len(self._buf) - keep:]
                    return out
                out.append(Content(self._buf[:i].rstrip()))
                self._buf, self._state = self._buf[i + len(self.start):], "call"
                self._reader = self.reader()
            elif self._state == "call":
                text, self._buf = self._buf, ""
                out += self._reader.feed(text)
                if not self._reader.done and self._reader.failed is None:
                    return out
                if self._reader.failed is not None:
                    out.append(Content(self.start + self._reader.failed))
                    self._buf, self._state = self._reader.rest, "text"
                else:
                    self._buf = self._reader.rest
                    self._state = "close" if self.end else "text"
            else:  # close: skip to the end marker
                stripped = self._buf.lstrip()
                if stripped.startswith(self.end):
                    self._buf, self._state = stripped[len(self.end):], "text"
                elif self.end.startswith(stripped):
                    return out
                else:
                    self._buf, self._state = stripped, "text"

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self._state == "call":
            out += self._reader.finish()
            if self._reader.failed is not None:
                out.append(Content(self.start + self._reader.failed))
        elif self._state == "text":
            out.append(Content(self._buf if self.num_calls == 0 else self._buf.rstrip()))
        self._buf = ""
        return out
