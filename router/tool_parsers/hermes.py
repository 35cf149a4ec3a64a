"""Hermes / Qwen2.5 / Qwen3 tool calls: ``<tool_call>\n{"name": "f", "arguments": {...}}
\n</tool_call>``, one block per call (several in a row for parallel calls)."""

from __future__ import annotations

from router.tool_parsers.base import MarkerParser
from router.tool_parsers.json_stream import CallReader


class HermesParser(MarkerParser):
    name = "hermes"
    start = "<tool_call>"
    end = "</tool_call>"

    def reader(self):
        return CallReader(self.start_call)
