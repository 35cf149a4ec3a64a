"""Structured outputs and the sampling fields of issue 18 through the official `openai` client,
against real prefill and decode workers on the demo model (remote prefill, KV pulled over
NIXL), compared with one engine on the same weights."""

import asyncio
import json

import pytest

from common.sampling_params import SamplingParams
from common.structured_output import StructuredOutput
from proto import pb, pb_grpc
from tests.cluster_helpers import worker_channel
from tests.structured_schemas import SCHEMAS

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

ASK_JSON = [{"role": "user", "content": "Reply with a JSON value."}]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def stats(address: str) -> pb.StatsResponse:
    async def call():
        async with worker_channel(address) as ch:
            return await pb_grpc.WorkerStub(ch).Stats(pb.StatsRequest())
    return asyncio.run(call())


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                   "strict": True}}


def test_twenty_schemas_validate_and_match_one_engine(client, reference):
    name = client.models.list().data[0].id
    params = [SamplingParams(max_tokens=150, temperature=0,
                             structured=StructuredOutput("json_schema", json.dumps(s)))
              for s in SCHEMAS]
    prompt = reference.tokenizer.encode_chat(ASK_JSON)
    expected = reference.generate([prompt] * len(SCHEMAS), params)
    for schema, want in zip(SCHEMAS, expected, strict=True):
        r = client.chat.completions.create(model=name, messages=ASK_JSON, temperature=0,
                                           max_tokens=150, response_format=schema_format(schema))
        text = r.choices[0].message.content
        jsonschema.validate(json.loads(text), schema)
        assert r.choices[0].finish_reason == "stop"
        assert text == want.text  # the disaggregated path equals one engine (greedy)


def test_json_object_and_stream_equal_non_stream(client):
    name = client.models.list().data[0].id
    kwargs = dict(model=name, messages=QUESTION, temperature=0, max_tokens=200,
                  response_format={"type": "json_object"})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    assert isinstance(json.loads(whole), dict)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


@pytest.mark.parametrize("schema, reason", [
    ({"type": "object", "properties": {"a": {"$ref": "#/nope"}}}, "does not exist"),
    ({"not": {"type": "string"}}, "Unimplemented keys"),
    ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
])
def test_rejected_schema_is_a_400_with_the_library_reason(client, schema, reason):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=client.models.list().data[0].id, messages=QUESTION,
                                       response_format=schema_format(schema), max_tokens=8)
    assert e.value.status_code == 400 and reason in str(e.value)
    assert e.value.body["param"] == "response_format"


def chat(client, **kwargs):
    return client.chat.completions.create(model=client.models.list().data[0].id,
                                          messages=QUESTION, temperature=0, **kwargs)


def test_logit_bias_min_tokens_and_repetition_penalty_take_effect(client, reference):
    plain = chat(client, max_tokens=32)
    assert plain.choices[0].message.content == "The capital of France is Paris."
    paris = reference.tokenizer.encode(" Paris")
    assert len(paris) == 1
    biased = chat(client, max_tokens=32, logit_bias={str(paris[0]): -100})
    assert "Paris" not in biased.choices[0].message.content
    forced = chat(client, max_tokens=5, logit_bias={str(paris[0]): 100})
    assert forced.choices[0].message.content == " Paris" * 5
    longer = chat(client, max_tokens=24, extra_body={"min_tokens": 20})
    assert longer.usage.completion_tokens >= 20 > plain.usage.completion_tokens
    want = reference.chat(QUESTION, SamplingParams(temperature=0, max_tokens=40,
                                                   repetition_penalty=1.5))[0].text
    penalised = chat(client, max_tokens=40, extra_body={"repetition_penalty": 1.5})
    assert penalised.choices[0].message.content == want
    assert want != chat(client, max_tokens=40).choices[0].message.content


def test_include_stop_str_and_continuous_usage(client):
    cut = chat(client, max_tokens=32, stop=["Paris"])
    assert cut.choices[0].message.content == "The capital of France is "
    kept = chat(client, max_tokens=32, stop=["Paris"],
                extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].message.content == "The capital of France is Paris"
    chunks = list(chat(client, max_tokens=32, stream=True,
                       stream_options={"include_usage": True, "continuous_usage_stats": True}))
    assert all(c.usage is not None for c in chunks)
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] == chunks[-1].usage.total_tokens - \
        chunks[-1].usage.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_from_one_prefill(cluster, client, stream):
    _router, prefill, decode = cluster
    before, hits_before = stats(prefill.address).prefills_served, \
        stats(decode.address).prefix_hit_tokens
    # A prompt no worker has seen (the chat template's system prompt is cached everywhere),
    # long enough for the router to send it to the prefill pool.
    story = ("An old lighthouse keeper on a rocky island kept a journal of every ship that "
             f"passed his light, and on the {'second' if stream else 'first'} stormy night of "
             "the winter he wrote down what he saw through the rain. Continue his journal.")
    kwargs = dict(model=client.models.list().data[0].id, temperature=1.0, seed=7, n=4,
                  max_tokens=12, messages=[{"role": "user", "content": story}])
    if stream:
        texts = ["", "", "", ""]
        finished = set()
        for c in client.chat.completions.create(stream=True, **kwargs):
            for choice in c.choices:
                texts[choice.index] += choice.delta.content or ""
                if choice.finish_reason:
                    finished.add(choice.index)
        assert finished == {0, 1, 2, 3}
    else:
        r = client.chat.completions.create(**kwargs)
        assert [c.index for c in r.choices] == [0, 1, 2, 3]
        texts = [c.message.content for c in r.choices]
        assert 12 < r.usage.completion_tokens <= 4 * 12  # summed over the choices
    assert len(set(texts)) > 1  # each choice samples its own tokens
    assert stats(prefill.address).prefills_served - before == 1  # one prefill for 4 choices
    # Choices 1..3 found the prompt's blocks in the decode worker's prefix cache.
    assert stats(decode.address).prefix_hit_tokens - hits_before >= 3 * 16
