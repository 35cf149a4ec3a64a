"""Refusals of tool fields name a field the request sent (the fuzz test found ``functions``
named for a body that sent only ``function_call``), and tool messages answer earlier calls."""

import pytest

from router.chat_request import template_messages, tool_setup
from router.errors import APIError
from router.openai_schema import ChatCompletionRequest

HI = [{"role": "user", "content": "Hi"}]


def _refused(body: dict) -> APIError:
    with pytest.raises(APIError) as refused:
        request = ChatCompletionRequest.model_validate({"model": "m", **body})
        tool_setup(request).check_enforced_schemas()  # as router/chat_route.py asks
        template_messages(request.messages)
    return refused.value


def test_legacy_and_new_tool_fields_together_name_the_legacy_field_sent():
    assert _refused({"messages": HI, "function_call": [], "tool_choice": []}).param == \
        "function_call"
    assert _refused({"messages": HI, "functions": [], "tool_choice": "auto"}).param == \
        "functions"


def test_a_forced_tool_with_a_schema_the_library_refuses_names_that_schema():
    tools = [{"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "f", "parameters": {"type": "banana"}}}]
    error = _refused({"messages": HI, "tools": tools, "tool_choice": "required"})
    assert error.param == "tools.1.function.parameters" and error.code == "invalid_schema"
    # Under auto the schemas only reach the template: not checked, not refused.
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": HI,
                                                    "tools": tools, "tool_choice": "auto"})
    assert tool_setup(request).enforced_schemas() == []


def test_tool_messages_must_answer_an_earlier_call():
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    answer = {"role": "tool", "tool_call_id": "call_1", "content": "22 C"}
    request = ChatCompletionRequest.model_validate({"model": "m",
                                                    "messages": [*HI, call, answer]})
    assert template_messages(request.messages)[2]["tool_call_id"] == "call_1"
    assert _refused({"messages": [*HI, answer]}).param == "messages.1.tool_call_id"
    assert _refused({"messages": [*HI, {"role": "tool", "content": "x"}]}).param == \
        "messages.1.tool_call_id"
