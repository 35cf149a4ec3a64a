"""Reasoning parsers: a model's thinking (``<think>…</think>``) separated from its answer.
``--reasoning-parser`` picks one; by default (``auto``), a chat template that writes
``<think>`` gets ``qwen3``."""

from __future__ import annotations

from router.reasoning.think import ThinkParser

CHOICES = ("auto", "none", "qwen3", "deepseek_r1")


def resolve(choice: str, chat_template: str | None) -> str | None:
    if choice == "auto":
        return "qwen3" if "<think>" in (chat_template or "") else None
    if choice == "none":
        return None
    if choice not in CHOICES:
        raise ValueError(f"unknown reasoning parser {choice!r}; choose from {', '.join(CHOICES)}")
    return choice


def make(name: str, prompt_text: str) -> ThinkParser:
    """A parser for one response. Thinking is already open when the prompt ends inside
    ``<think>`` (DeepSeek-R1's template, Qwen3's with thinking forced on); ``deepseek_r1``
    assumes it is open even when the prompt does not show it (R1 models often skip the tag)."""
    opened = prompt_text.rfind("<think>") > prompt_text.rfind("</think>")
    return ThinkParser(in_reasoning=opened or name == "deepseek_r1")
