"""The Anthropic Messages request as the chat request it becomes."""

import pytest

from router.anthropic.translate import MessagesRequest, to_chat
from router.chat_request import template_messages, tool_setup
from router.errors import APIError


def body(**fields):
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 8, "messages": [
        {"role": "user", "content": "hi"}], **fields})


def test_blocks_become_messages_calls_and_tool_results():
    chat = to_chat(body(system=[{"type": "text", "text": "Be brief."}], messages=[
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "22 C"}]},
            {"type": "text", "text": "And tomorrow?"}]}],
        tools=[{"name": "w", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        thinking={"type": "disabled"}, stop_sequences=["END"]))
    msgs = template_messages(chat.messages)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "user"]
    assert msgs[2]["tool_calls"][0]["function"] == {"name": "w", "arguments": {"city": "Paris"}}
    assert msgs[3] == {"role": "tool", "content": "22 C", "tool_call_id": "toolu_1"}
    setup = tool_setup(chat)
    assert setup.mode == "required" and not setup.parallel
    assert chat.chat_template_kwargs == {"enable_thinking": False}
    assert chat.stop_list() == ["END"]
    named = tool_setup(to_chat(body(tools=[{"name": "w", "input_schema": {}}],
                                    tool_choice={"type": "tool", "name": "w"})))
    assert named.mode == "named" and named.function == "w"


@pytest.mark.parametrize("fields,param", [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "messages.0.content.0.type"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_what_is_not_honoured_is_refused_by_name(fields, param):
    with pytest.raises(APIError) as info:
        to_chat(body(**fields))
    assert info.value.status == 400 and info.value.param == param


def test_inert_fields_are_accepted():
    to_chat(body(metadata={"user_id": "u"}, cache_control={"type": "ephemeral"}))
