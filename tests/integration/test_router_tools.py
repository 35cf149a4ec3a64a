"""Tools, reasoning and the smaller endpoints through the official `openai` client, against
real workers on the demo model with a Qwen-style (Hermes) chat template given by the router's
--chat-template (tests/integration/templates/hermes_tools.jinja)."""

import json
from pathlib import Path

import httpx
import pytest

from tests.cluster_helpers import RouterProcess, WorkerProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

TEMPLATE = Path(__file__).parent / "templates" / "hermes_tools.jinja"
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 20},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 10}},
        "required": ["zone"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description":
                                           "Current weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
HISTORY = [*QUESTION,
           {"role": "assistant", "content": None, "tool_calls": [{
               "id": "call_1", "type": "function", "function": {
                   "name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees, sunny"}]


@pytest.fixture(scope="module")
def cluster(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    prefill = WorkerProcess("prefill", model, redis_server.url)
    decode = WorkerProcess("decode", model, redis_server.url)
    router = RouterProcess(redis_server.url, model + ["--local-prefill-threshold", "8",
                                                      "--chat-template", str(TEMPLATE)],
                           wait_for=(1, 1))
    yield router
    router.stop()
    for w in (prefill, decode):
        w.stop()


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def name(client):
    return client.models.list().data[0].id


def tokenize(cluster, **body) -> list[int]:
    r = httpx.post(f"{cluster.url}/tokenize", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def detokenize(cluster, tokens) -> str:
    return httpx.post(f"{cluster.url}/detokenize", json={"tokens": tokens}).json()["prompt"]


def test_tools_are_rendered_into_the_prompt(cluster, client, name):
    plain = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=2)
    with_tools = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=2,
                                                tools=TOOLS, tool_choice="none")
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens
    ids = tokenize(cluster, messages=QUESTION, tools=TOOLS)
    assert with_tools.usage.prompt_tokens == len(ids)
    assert '"name": "get_weather"' in detokenize(cluster, ids)


def test_tool_result_round_trips_through_the_history(cluster, client, name):
    r = client.chat.completions.create(model=name, messages=HISTORY, tools=TOOLS,
                                       temperature=0, max_tokens=8)
    ids = tokenize(cluster, messages=HISTORY, tools=TOOLS)
    assert r.usage.prompt_tokens == len(ids)
    prompt = detokenize(cluster, ids)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": ' \
           '"celsius"}}\n</tool_call>' in prompt
    assert "<tool_response>\n22 degrees, sunny\n</tool_response>" in prompt


def test_auto_with_text_answer_streams_like_non_stream(client, name):
    kwargs = dict(model=name, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=24)
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (whole.message.content or "") == text
    assert bool(whole.message.tool_calls) == bool(calls)
    assert whole.finish_reason == [c.choices[0].finish_reason for c in chunks
                                   if c.choices and c.choices[0].finish_reason][0]


def _check_calls(calls, names):
    assert calls
    for c in calls:
        assert c.type == "function" and c.id.startswith("call_") and c.function.name in names
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


def _streamed_calls(chunks) -> list[dict]:
    calls: dict[int, dict] = {}
    for c in chunks:
        for d in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            if d.index not in calls:  # the first delta of a call: id, type, name, ""
                assert d.id and d.type == "function" and d.function.name
                assert d.function.arguments == ""
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
            else:
                assert d.id is None and d.function.name is None
                calls[d.index]["arguments"] += d.function.arguments
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_tool_choice_required_is_forced_and_validates(client, name, temperature):
    r = client.chat.completions.create(model=name, messages=QUESTION, tools=TOOLS,
                                       tool_choice="required", temperature=temperature,
                                       seed=1, max_tokens=200)
    choice = r.choices[0]
    _check_calls(choice.message.tool_calls, SCHEMAS)
    assert choice.finish_reason == "tool_calls"


def test_tool_choice_named_is_forced_streamed_and_not(client, name):
    kwargs = dict(model=name, messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=200,
                  tool_choice={"type": "function", "function": {"name": "get_time"}})
    whole = client.chat.completions.create(**kwargs).choices[0]
    _check_calls(whole.message.tool_calls, {"get_time"})
    assert len(whole.message.tool_calls) == 1 and whole.finish_reason == "stop"  # as OpenAI
    streamed = _streamed_calls(list(client.chat.completions.create(stream=True, **kwargs)))
    assert [(c["name"], c["arguments"]) for c in streamed] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]


def test_tool_choice_required_streams_as_openai_does(client, name):
    kwargs = dict(model=name, messages=QUESTION, tools=TOOLS, tool_choice="required",
                  temperature=0, max_tokens=200)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = _streamed_calls(chunks)
    assert [(c["name"], c["arguments"]) for c in streamed] == \
        [(c.function.name, c.function.arguments) for c in whole]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == \
        ["tool_calls"]


def test_bad_tool_requests_get_400_naming_the_param(client, name):
    cases = [("tool_choice", dict(tools=TOOLS, tool_choice={"type": "function", "function": {
        "name": "nope"}})), ("tool_choice", dict(tool_choice="required")),
        ("tools", dict(tools=[TOOLS[0], TOOLS[0]])),
        ("chat_template_kwargs", dict(extra_body={"chat_template_kwargs": {"messages": []}}))]
    for param, extra in cases:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=name, messages=QUESTION, max_tokens=2, **extra)
        assert info.value.body["param"] == param, info.value.body


def test_reasoning_is_split_from_the_answer(cluster, client, name):
    """enable_thinking opens <think> in the prompt: the demo model never closes it, so all it
    writes is reasoning, the same text /v1/completions gives on the same prompt tokens."""
    think = {"chat_template_kwargs": {"enable_thinking": True}}
    ids = tokenize(cluster, messages=QUESTION, chat_template_kwargs=think[
        "chat_template_kwargs"])
    assert detokenize(cluster, ids).endswith("<|im_start|>assistant\n<think>\n")
    expected = client.completions.create(model=name, prompt=ids, temperature=0,
                                         max_tokens=16).choices[0].text
    r = client.chat.completions.create(model=name, messages=QUESTION, temperature=0,
                                       max_tokens=16, extra_body=think)
    message = r.choices[0].message
    assert r.usage.prompt_tokens == len(ids)
    assert message.reasoning_content == expected and message.content is None
    chunks = list(client.chat.completions.create(model=name, messages=QUESTION, temperature=0,
                                                 max_tokens=16, stream=True, extra_body=think))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == expected
    assert not "".join(d.content or "" for d in deltas)
    plain = client.chat.completions.create(model=name, messages=QUESTION, temperature=0,
                                           max_tokens=16).choices[0].message
    assert getattr(plain, "reasoning_content", None) is None and plain.content


def test_model_by_id_version_and_errors_in_openai_shape(cluster, client, name):
    assert client.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope")
    assert info.value.body["code"] == "model_not_found"
    assert httpx.get(f"{cluster.url}/version").json()["version"]
    for method, path, status in [("GET", "/tokenize", 405), ("POST", "/v1/nope", 404)]:
        r = httpx.request(method, cluster.url + path)
        assert r.status_code == status and set(r.json()["error"]) == {
            "message", "type", "param", "code"}


def test_tokenize_and_detokenize(cluster, client, name):
    ids = tokenize(cluster, prompt="Hello world", model=name)
    assert detokenize(cluster, ids) == "Hello world"
    r = httpx.post(f"{cluster.url}/tokenize", json={"prompt": "Hi", "return_token_strs": True})
    assert r.json()["count"] == len(r.json()["token_strs"]) and r.json()["max_model_len"] > 0
    chat_ids = tokenize(cluster, messages=QUESTION)
    r = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=1)
    assert r.usage.prompt_tokens == len(chat_ids)
    for body, param in [({"tokens": [10**9]}, "tokens"), ({"prompt": "a", "messages": QUESTION},
                                                           "prompt")]:
        path = "/detokenize" if "tokens" in body else "/tokenize"
        bad = httpx.post(cluster.url + path, json=body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
