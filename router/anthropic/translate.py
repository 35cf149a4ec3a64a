"""An Anthropic Messages request as an OpenAI chat request, so it takes the same path (chat
template, tools, parsers, P/D): ``system`` -> a system message, ``tool_use`` blocks -> an
assistant's ``tool_calls``, ``tool_result`` blocks -> tool messages (before the user's text,
since they answer the previous turn's calls), ``tool_choice`` auto/any/tool/none ->
auto/required/named/none, ``thinking`` -> the template's ``enable_thinking``. What it cannot
honour is refused by name."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from router.errors import bad_request
from router.openai_schema import ChatCompletionRequest, Text

_ALLOW = ConfigDict(extra="allow", allow_inf_nan=False)
# Fields that ask nothing of the answer (accounting, routing hints of Anthropic's service;
# prompt caching is automatic here): accepted and ignored. Anything else unknown is refused.
_INERT_EXTRAS = {"metadata", "service_tier", "cache_control", "speed", "inference_geo",
                 "diagnostics", "user_profile_id", "workspace_id"}


class Block(BaseModel):
    model_config = _ALLOW
    type: str
    text: Text | None = None
    id: Text | None = None
    name: Text | None = None
    input: Any = None
    tool_use_id: Text | None = None
    content: Any = None
    is_error: bool | None = None
    thinking: Text | None = None
    signature: Text | None = None
    cache_control: Any = None  # prompt caching is automatic here


class Message(BaseModel):
    model_config = _ALLOW
    role: Literal["user", "assistant"]
    content: Text | list[Block]


class ToolDef(BaseModel):
    model_config = _ALLOW
    name: Text
    description: Text | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: Any = None


class ToolChoice(BaseModel):
    model_config = _ALLOW
    type: Literal["auto", "any", "tool", "none"]
    name: Text | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(BaseModel):
    model_config = _ALLOW
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class MessagesRequest(BaseModel):
    model_config = _ALLOW
    model: Text
    max_tokens: int = Field(ge=1, lt=2**32)
    messages: list[Message] = Field(min_length=1)
    system: Text | list[Block] | None = None
    stop_sequences: list[Text] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, lt=2**31)
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


def _text(blocks: list[Block] | str, where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    parts = []
    for j, b in enumerate(blocks):
        if isinstance(b, dict) and isinstance(b.get("type"), str):
            b = Block.model_validate(b)
        if not isinstance(b, Block) or b.type != "text" or not isinstance(b.text, str):
            shown = b.type if isinstance(b, Block) else type(b).__name__
            raise bad_request(f"{where}.{j}: only text blocks are supported here, not "
                              f"{shown!r}", param=f"{where}.{j}.type")
        parts.append(b.text or "")
    return "".join(parts)


def _message(i: int, m: Message) -> list[dict]:
    where = f"messages.{i}.content"
    if isinstance(m.content, str):
        return [{"role": m.role, "content": m.content}]
    texts, calls, results = [], [], []
    for j, b in enumerate(m.content):
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "tool_use" and m.role == "assistant":
            calls.append({"id": b.id or f"toolu_{i}_{j}", "type": "function", "function": {
                "name": b.name, "arguments": json.dumps(b.input or {}, ensure_ascii=False)}})
        elif b.type == "tool_result" and m.role == "user":
            content = b.content if b.content is not None else ""
            text = _text(content, f"{where}.{j}.content") if isinstance(content, list) \
                else str(content)
            results.append({"role": "tool", "tool_call_id": b.tool_use_id or "",
                            "content": ("Error: " + text) if b.is_error else text})
        elif b.type in ("thinking", "redacted_thinking") and m.role == "assistant":
            continue  # earlier turns' thinking is not shown to the model again
        else:
            raise bad_request(f"{where}.{j}: content blocks of type {b.type!r} are not "
                              f"supported in a {m.role} message", param=f"{where}.{j}.type")
    out = list(results)
    if texts or calls or not results:
        msg: dict = {"role": m.role, "content": "".join(texts) if texts or not calls else None}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def to_chat(body: MessagesRequest) -> ChatCompletionRequest:
    for name, value in (body.model_extra or {}).items():
        if value is not None and name not in _INERT_EXTRAS:
            raise bad_request(f"Unsupported parameter: '{name}' is not implemented by pdserve",
                              param=name)
    messages: list[dict] = []
    if body.system:
        messages.append({"role": "system", "content": _text(body.system, "system")})
    for i, m in enumerate(body.messages):
        messages += _message(i, m)
    chat: dict[str, Any] = {
        "model": body.model, "messages": messages, "max_tokens": body.max_tokens,
        "stream": body.stream, "temperature": body.temperature, "top_p": body.top_p,
        "top_k": body.top_k, "stop": body.stop_sequences or None}
    if body.tools:
        chat["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.input_schema}}
            for t in body.tools]
    choice = body.tool_choice
    if choice is not None:
        if choice.type == "tool":
            if not choice.name:
                raise bad_request("tool_choice of type 'tool' needs a name", param="tool_choice")
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif body.tools or choice.type != "none":
            chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            chat["parallel_tool_calls"] = False
    if body.thinking is not None:
        chat["chat_template_kwargs"] = {"enable_thinking": body.thinking.type != "disabled"}
    return ChatCompletionRequest.model_validate(chat)
