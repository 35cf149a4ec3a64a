"""Tool-call parsers, one per family of models, and which one a model gets: ``--tool-call-parser``
or, by default (``auto``), the one whose call marker its chat template writes."""

from __future__ import annotations

from router.tool_parsers.base import ToolParser
from router.tool_parsers.hermes import HermesParser
from router.tool_parsers.llama3_json import Llama3JsonParser
from router.tool_parsers.mistral import MistralParser

PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
}
CHOICES = ("auto", "none", *PARSERS)


def detect(chat_template: str | None) -> str | None:
    """The parser a chat template's own call format calls for, or None."""
    t = chat_template or ""
    if "<tool_call>" in t:
        return "hermes"
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if "<|python_tag|>" in t or ("ipython" in t and '"parameters"' in t):
        return "llama3_json"
    return None


def resolve(choice: str, chat_template: str | None) -> str | None:
    """``--tool-call-parser`` -> a parser name, or None for none."""
    if choice == "auto":
        return detect(chat_template)
    if choice == "none":
        return None
    if choice not in PARSERS:
        raise ValueError(f"unknown tool-call parser {choice!r}; choose from {', '.join(CHOICES)}")
    return choice
