"""``POST /v1/messages`` through the official `anthropic` client, against real workers on the
demo model (Qwen-style tool template via --chat-template), compared with the OpenAI route."""

import json
from pathlib import Path

import httpx
import pytest

from tests.cluster_helpers import RouterProcess, WorkerProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

TEMPLATE = Path(__file__).parent / "templates" / "hermes_tools.jinja"
QUESTION = "What is the capital of France?"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
          "required": ["city"], "additionalProperties": False}
# The current client has no temperature argument (the API still takes the field).
GREEDY = {"temperature": 0}
TOOL = {"name": "get_weather", "description": "Current weather", "input_schema": SCHEMA}


@pytest.fixture(scope="module")
def cluster(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    prefill = WorkerProcess("prefill", model, redis_server.url)
    decode = WorkerProcess("decode", model, redis_server.url)
    router = RouterProcess(redis_server.url, model + ["--local-prefill-threshold", "8",
                                                      "--chat-template", str(TEMPLATE),
                                                      "--api-key", "sk-test"],
                           wait_for=(1, 1))
    yield router
    router.stop()
    for w in (prefill, decode):
        w.stop()


@pytest.fixture(scope="module")
def claude(cluster):
    return anthropic.Anthropic(base_url=cluster.url, api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def gpt(cluster):
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def name(gpt):
    return gpt.models.list().data[0].id


def test_message_matches_the_chat_route(claude, gpt, name):
    r = claude.messages.create(model=name, max_tokens=32, extra_body=GREEDY, system="Be brief.",
                               messages=[{"role": "user", "content": QUESTION}])
    chat = gpt.chat.completions.create(model=name, max_tokens=32, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}])
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert [b.type for b in r.content] == ["text"]
    assert r.content[0].text == chat.choices[0].message.content
    assert r.stop_reason == "end_turn" and r.stop_sequence is None
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.usage.output_tokens == chat.usage.completion_tokens


def test_stream_events_in_anthropic_order(claude, name):
    kwargs = dict(model=name, max_tokens=5, extra_body=GREEDY,
                  messages=[{"role": "user", "content": QUESTION}])
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        events = [e.type for e in stream if e.type in (
            "message_start", "content_block_start", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop")]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[1] == "content_block_start"
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[2:-3]) == {"content_block_delta"}
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason == "max_tokens"
    assert final.usage.output_tokens == whole.usage.output_tokens == 5


def test_tool_result_round_trips(cluster, claude, gpt, name):
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                     "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "22 C"}]}]
    r = claude.messages.create(model=name, max_tokens=4, extra_body=GREEDY, tools=[TOOL],
                               tool_choice={"type": "none"}, messages=messages)
    openai_messages = [messages[0], {"role": "assistant", "content": "Let me look.",
                                     "tool_calls": [{"id": "toolu_1", "type": "function",
                                                     "function": {"name": "get_weather",
                                                                  "arguments": '{"city": "Paris"}'}}]},
                       {"role": "tool", "tool_call_id": "toolu_1", "content": "22 C"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description":
                                               "Current weather", "parameters": SCHEMA}}]
    ids = httpx.post(f"{cluster.url}/tokenize", headers={"x-api-key": "sk-test"}, json={
        "messages": openai_messages, "tools": tools}).json()["tokens"]
    assert r.usage.input_tokens == len(ids)
    chat = gpt.chat.completions.create(model=name, max_tokens=4, temperature=0, tools=tools,
                                       tool_choice="none", messages=openai_messages)
    assert r.content[0].text == chat.choices[0].message.content


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_forced_tool_use_stream_and_not(claude, name, choice):
    kwargs = dict(model=name, max_tokens=100, extra_body=GREEDY, tools=[TOOL],
                  tool_choice=choice,
                  messages=[{"role": "user", "content": "Weather in Paris?"}])
    r = claude.messages.create(**kwargs)
    uses = [b for b in r.content if b.type == "tool_use"]
    assert uses and all(b.name == "get_weather" for b in uses)
    for b in uses:
        jsonschema.validate(b.input, SCHEMA)
    with claude.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    assert [(b.name, json.dumps(b.input)) for b in final.content if b.type == "tool_use"] == \
        [(b.name, json.dumps(b.input)) for b in uses]
    if choice["type"] == "any":
        assert r.stop_reason == final.stop_reason == "tool_use"


def test_errors_in_anthropic_shape(cluster, claude, name):
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=name, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAAA"}}]}])
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="nope", max_tokens=4,
                               messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["type"] == "not_found_error"
    r = httpx.post(f"{cluster.url}/v1/messages", headers={"x-api-key": "sk-test"},
                   json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(f"{cluster.url}/v1/messages", headers={"x-api-key": "sk-test"},
                   json={"model": name, "max_tokens": 4, "frobnicate": 1,
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "frobnicate" in r.json()["error"]["message"]
