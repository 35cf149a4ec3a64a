"""``<think>…</think>`` split from the answer while the text streams: everything between the
tags (or from the start, if the prompt opened them) is reasoning, the rest content. Only the
start of an answer may open thinking; text that may be the start of a tag is held back until
the next text shows it is not. The blank lines after ``</think>`` are dropped."""

from __future__ import annotations

from router.output_deltas import Content, Delta, Reasoning
from router.tool_parsers.base import held_prefix

OPEN, CLOSE = "<think>", "</think>"


class ThinkParser:
    def __init__(self, in_reasoning: bool = False):
        # before (may open) -> reasoning -> after_close (drops blank lines) -> content
        self._state = "reasoning" if in_reasoning else "before"
        self._buf = ""

    def feed(self, text: str) -> list[Delta]:
        self._buf += text
        out: list[Delta] = []
        while True:
            if self._state == "content":
                out.append(Content(self._buf))
                self._buf = ""
                return out
            if self._state == "before":
                stripped = self._buf.lstrip()
                if stripped.startswith(OPEN):
                    self._buf, self._state = stripped[len(OPEN):], "reasoning"
                elif OPEN.startswith(stripped):
                    return out
                else:
                    self._state = "content"
            elif self._state == "reasoning":
                i = self._buf.find(CLOSE)
                if i < 0:
                    keep = held_prefix(self._buf, CLOSE)
                    out.append(Reasoning(self._buf[:len(self._buf) - keep]))
                    self._buf = self._buf[len(self._buf) - keep:]
                    return out
                out.append(Reasoning(self._buf[:i]))
                self._buf, self._state = self._buf[i + len(CLOSE):], "after_close"
            else:  # after_close
                stripped = self._buf.lstrip()
                if not stripped:
                    self._buf = ""
                    return out
                self._buf, self._state = stripped, "content"

    def finish(self) -> list[Delta]:
        text, self._buf = self._buf, ""
        if not text or self._state == "after_close":
            return []
        return [Reasoning(text) if self._state == "reasoning" else Content(text)]
