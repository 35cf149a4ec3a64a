"""A chat request as the chat template and the engine take it: the messages (with the calls
in the history) and the tools as transformers' ``apply_chat_template`` passes them, the
``tool_choice`` as a mode, and, for ``required`` or a named function, the grammar that forces
the output to be calls (``common.structured_output``, enforced by the engine)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from common.grammar import GrammarError, check_structured
from common.structured_output import StructuredOutput
from router.errors import bad_request
from router.openai_schema import ChatCompletionRequest, ChatMessage
from router.tool_parsers import forced

# Template variables a request may not set through chat_template_kwargs: the router's own.
RESERVED_TEMPLATE_VARS = frozenset({"messages", "tools", "add_generation_prompt", "bos_token",
                                    "eos_token", "documents"})


@dataclass(frozen=True)
class ToolSetup:
    tools: list[dict] = field(default_factory=list)  # OpenAI's {"type": "function", ...}
    mode: str = "none"  # none | auto | required | named
    function: str | None = None  # the named function
    parallel: bool = True
    legacy: bool = False  # sent as functions / function_call: answer in that form

    def structured(self) -> StructuredOutput | None:
        if self.mode == "required":
            return StructuredOutput("json_schema",
                                    forced.schema_for_required(self.tools, self.parallel))
        if self.mode == "named":
            tool = next(t for t in self.tools if t["function"]["name"] == self.function)
            return StructuredOutput("json_schema", forced.schema_for_named(tool))
        return None

    def enforced_schemas(self) -> list[tuple[int, StructuredOutput]]:
        """(tool index, its ``parameters`` as a grammar) of each tool whose calls the output
        is forced into (``required`` or a named function); none under ``auto``, where the
        schemas only reach the template, unchecked: agents send keywords the library cannot
        enforce, and nothing enforces them there."""
        if self.mode not in ("required", "named"):
            return []
        return [(i, StructuredOutput("json_schema", json.dumps(
                    tool["function"].get("parameters") or {"type": "object"})))
                for i, tool in enumerate(self.tools)
                if self.mode == "required" or tool["function"]["name"] == self.function]

    def check_enforced_schemas(self) -> None:
        """Each enforced schema must be one the grammar library accepts: a 400 naming the
        tool's schema otherwise."""
        for i, structured in self.enforced_schemas():
            try:
                check_structured(structured)
            except GrammarError as e:
                param = (f"functions.{i}.parameters" if self.legacy
                         else f"tools.{i}.function.parameters")
                raise bad_request(f"{param}: {e}", param=param, code="invalid_schema") from None


def tool_setup(body: ChatCompletionRequest) -> ToolSetup:
    legacy = body.functions is not None or body.function_call is not None
    if legacy and (body.tools is not None or body.tool_choice is not None):
        raise bad_request("send either tools / tool_choice or the legacy functions / "
                          "function_call, not both",
                          param="functions" if body.functions is not None else "function_call")
    if legacy:
        tools = [{"type": "function", "function": f.model_dump(exclude_none=True)}
                 for f in body.functions or []]
        choice, param = body.function_call, "function_call"
        if isinstance(choice, dict) and set(choice) == {"name"}:
            choice = {"type": "function", "function": choice}
    else:
        tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
        choice, param = body.tool_choice, "tool_choice"
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("tool names must be unique", param="tools")
    if choice is None:
        choice = "auto" if tools else "none"
    parallel = body.parallel_tool_calls is not False and not legacy
    if choice in ("none", "auto", "required"):
        if choice != "none" and not tools:
            raise bad_request(f"{param} {choice!r} needs tools", param=param)
        return ToolSetup(tools, choice, None, parallel, legacy)
    if (isinstance(choice, dict) and choice.get("type") == "function"
            and isinstance(choice.get("function"), dict)
            and isinstance(choice["function"].get("name"), str)):
        name = choice["function"]["name"]
        if name not in names:
            raise bad_request(f"{param} names the function {name!r}, which is not among the "
                              f"tools ({', '.join(names) or 'none'})", param=param)
        return ToolSetup(tools, "named", name, parallel, legacy)
    raise bad_request(f"{param} must be 'none', 'auto', 'required' or "
                      f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                      param=param)


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """The messages as chat templates read them. Call arguments are parsed into objects, as
    vLLM does (templates write them with ``tojson``); a legacy ``function`` message is a tool
    message."""
    out = []
    call_ids: set[str] = set()  # of the calls so far: what a tool message may answer
    for m in messages:
        if m.role == "tool":
            _check_answers_a_call(m, len(out), call_ids)
        msg: dict = {"role": "tool" if m.role == "function" else m.role, "content": m.text()}
        calls = list(m.tool_calls or [])
        if m.function_call is not None:
            calls.append(_legacy_call(m, len(out)))
        if calls:
            if m.role != "assistant":
                raise bad_request("only assistant messages carry tool_calls",
                                  param=f"messages.{len(out)}.tool_calls")
            msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                for c in calls]
            call_ids.update(c.id for c in calls)
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            msg["name"] = m.name
        out.append(msg)
    return out


def _check_answers_a_call(m: ChatMessage, i: int, call_ids: set[str]) -> None:
    """A tool message answers a call an earlier assistant message made, by its id (OpenAI
    refuses both faults; a template would otherwise show the model a result of no call)."""
    if m.tool_call_id is None:
        raise bad_request(f"messages.{i}: a message with role 'tool' needs the "
                          f"'tool_call_id' of the call it answers",
                          param=f"messages.{i}.tool_call_id")
    if m.tool_call_id not in call_ids:
        shown = m.tool_call_id[:64]
        raise bad_request(f"messages.{i}: tool_call_id {shown!r} answers no tool call of an "
                          f"earlier assistant message", param=f"messages.{i}.tool_call_id")


def _legacy_call(m: ChatMessage, i: int):
    from router.openai_schema import ToolCall

    return ToolCall(id=f"call_{i}", function=m.function_call)


def _arguments(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def template_kwargs(body: ChatCompletionRequest) -> dict:
    kwargs = dict(body.chat_template_kwargs or {})
    clash = sorted(RESERVED_TEMPLATE_VARS & kwargs.keys())
    if clash:
        raise bad_request(f"chat_template_kwargs may not set {', '.join(clash)}",
                          param="chat_template_kwargs")
    return kwargs
