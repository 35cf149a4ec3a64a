"""One response's text made into its parts, as it streams: reasoning first (a thinking section
is never searched for calls), then the tool-call parser over the content. ``OutputShaper`` is
the same for the OpenAI and the Anthropic formats; ``openai_delta`` and ``openai_message``
write OpenAI's chat shapes (``tool_calls``, or the legacy ``function_call``)."""

from __future__ import annotations

from router.output_deltas import CallArgs, CallStart, Content, Delta, Reasoning, merged
from router.reasoning.think import ThinkParser
from router.tool_parsers.base import ToolParser


class OutputShaper:
    def __init__(self, reasoning: ThinkParser | None = None, tools: ToolParser | None = None,
                 single_call: bool = False, forced_name: bool = False,
                 strip_suffix: str | None = None):
        self._reasoning = reasoning
        self._tools = tools
        self._single = single_call
        self._forced_name = forced_name
        self._strip = strip_suffix  # the EOS text, when special tokens are kept
        self.content = ""
        self.reasoning = ""
        self.calls: list[dict] = []  # {"id", "name", "arguments"}

    def feed(self, text: str, final: bool = False) -> list[Delta]:
        if final and self._strip and text.endswith(self._strip):
            text = text[:-len(self._strip)]
        parts: list[Delta] = self._reasoning.feed(text) if self._reasoning else [Content(text)]
        if final and self._reasoning:
            parts += self._reasoning.finish()
        out: list[Delta] = []
        for d in parts:
            out += self._tools.feed(d.text) if self._tools and isinstance(d, Content) else [d]
        if final and self._tools:
            out += self._tools.finish()
        if self._single:
            out = [d for d in out if not isinstance(d, (CallStart, CallArgs)) or d.index == 0]
        out = merged(out)
        for d in out:
            if isinstance(d, Content):
                self.content += d.text
            elif isinstance(d, Reasoning):
                self.reasoning += d.text
            elif isinstance(d, CallStart):
                self.calls.append({"id": d.id, "name": d.name, "arguments": ""})
            else:
                self.calls[d.index]["arguments"] += d.text
        return out

    def finish_reason(self, engine_reason: str | None) -> str | None:
        """``tool_calls`` when the answer ended in calls (OpenAI keeps ``stop`` for a function
        named in tool_choice)."""
        if self.calls and engine_reason == "stop" and not self._forced_name:
            return "tool_calls"
        return engine_reason


def openai_delta(d: Delta, legacy: bool) -> dict:
    if isinstance(d, Content):
        return {"content": d.text}
    if isinstance(d, Reasoning):
        return {"reasoning_content": d.text}
    if legacy:
        if isinstance(d, CallStart):
            return {"function_call": {"name": d.name, "arguments": ""}}
        return {"function_call": {"arguments": d.text}}
    if isinstance(d, CallStart):
        return {"tool_calls": [{"index": d.index, "id": d.id, "type": "function",
                                "function": {"name": d.name, "arguments": ""}}]}
    return {"tool_calls": [{"index": d.index, "function": {"arguments": d.text}}]}


def openai_message(shaper: OutputShaper, legacy: bool) -> dict:
    msg: dict = {"role": "assistant",
                 "content": shaper.content or (
                     None if shaper.calls or shaper.reasoning else "")}
    if shaper.reasoning:
        msg["reasoning_content"] = shaper.reasoning
    if shaper.calls and legacy:
        c = shaper.calls[0]
        msg["function_call"] = {"name": c["name"], "arguments": c["arguments"]}
    elif shaper.calls:
        msg["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
            "name": c["name"], "arguments": c["arguments"]}} for c in shaper.calls]
    return msg


def legacy_finish(reason: str | None, legacy: bool) -> str | None:
    return "function_call" if legacy and reason == "tool_calls" else reason
