"""What the output parsers (router/reasoning/, router/tool_parsers/) make of the model's text,
piece by piece: the API formatters (OpenAI chat, Anthropic messages) turn these into their own
stream chunks and message bodies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Content:
    text: str


@dataclass
class Reasoning:
    text: str


@dataclass
class CallStart:
    """A tool call begins: its index among this response's calls, id and function name."""
    index: int
    id: str
    name: str


@dataclass
class CallArgs:
    """A fragment of a call's arguments (JSON text); the fragments of a call concatenate to
    its arguments."""
    index: int
    text: str


Delta = Content | Reasoning | CallStart | CallArgs


def merged(deltas: list[Delta]) -> list[Delta]:
    """Neighbouring text deltas of one kind (and argument fragments of one call) as one."""
    out: list[Delta] = []
    for d in deltas:
        last = out[-1] if out else None
        if isinstance(d, (Content, Reasoning)) and type(last) is type(d):
            last.text += d.text
        elif isinstance(d, CallArgs) and isinstance(last, CallArgs) and last.index == d.index:
            last.text += d.text
        elif isinstance(d, (Content, Reasoning, CallArgs)) and not d.text:
            continue
        else:
            out.append(type(d)(**vars(d)))
    return out
