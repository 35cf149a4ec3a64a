"""Property: whatever a client sends, the router answers below 500, in OpenAI's error shape when
it refuses, and keeps the connection. Hostile bodies are generated over the schema's fields
(hypothesis) and sent to a real router process (uvicorn, so keep-alive is the real thing) with
a real decode worker on the demo model (``--role both``: it prefills too), over real Redis."""

import json
from collections import Counter

import httpx
import pytest

from tests.cluster_helpers import RouterProcess, WorkerProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXTREME_INTS = [-(2**63) - 1, -(2**63), -(2**31) - 1, -1, 0, 1, 2**31 - 1, 2**31, 2**32 - 1,
                2**32, 2**63 - 1, 2**63, 2**64, 10**30]
EXTREME_FLOATS = [5e-324, 1e-300, 1e-45, -0.0, 1e308, 2.0000001, float("nan"), float("inf"),
                  -float("inf")]
_chars = st.one_of(st.characters(), st.characters(categories=["Cs"]))  # Cs: lone surrogates
texts = st.text(_chars, max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(EXTREME_INTS), st.integers(),
                    st.sampled_from(EXTREME_FLOATS), st.floats(), texts)
token_ids = st.lists(st.one_of(st.sampled_from(EXTREME_INTS), st.integers(0, 60000)),
                     max_size=4)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)), max_leaves=6)
message = st.fixed_dictionaries({"role": st.sampled_from(
    ["user", "system", "assistant", "tool", "developer", "function", ""]), "content": st.one_of(
        texts, st.none(), st.lists(st.fixed_dictionaries({"type": st.sampled_from(
            ["text", "image_url"]), "text": st.one_of(texts, scalars)}), max_size=2), values)},
    optional={"name": st.one_of(texts, scalars), "tool_calls": values,
              "tool_call_id": values, "x": values})
# max_tokens never asks for many tokens that would really be generated (CPU time), so only the
# edges: below 1, tiny, or far beyond the context.
max_tokens = st.sampled_from([None, -1, 0, 1, 3, 2**31, 2**32, 2**63, 10**6, "2", 2.5, True])

FIELDS = {
    "model": st.one_of(texts, scalars), "messages": st.one_of(st.lists(message, max_size=3),
                                                              values),
    "prompt": st.one_of(texts, token_ids, st.lists(token_ids, max_size=2),
                        st.lists(texts, max_size=2), values),
    "max_tokens": max_tokens, "max_completion_tokens": max_tokens,
    "temperature": scalars, "top_p": scalars, "top_k": scalars, "n": scalars, "seed": scalars,
    "stop": st.one_of(texts, st.lists(texts, max_size=5), values), "presence_penalty": scalars,
    "frequency_penalty": scalars, "user": scalars, "cache_salt": scalars, "ignore_eos": scalars,
    "stream": st.booleans(), "stream_options": st.one_of(values, st.fixed_dictionaries(
        {}, optional={"include_usage": scalars, "continuous_usage_stats": scalars})),
    "logprobs": scalars, "top_logprobs": scalars, "echo": scalars, "suffix": scalars,
    "tools": values, "tool_choice": values, "functions": values, "function_call": values,
    "response_format": values, "logit_bias": values, "min_tokens": scalars,
    "repetition_penalty": scalars, "include_stop_str_in_output": scalars,
    "parallel_tool_calls": scalars, "best_of": scalars,
}


@st.composite
def hostile_bodies(draw):
    chat = draw(st.booleans())
    body = {"model": MODEL, "max_tokens": 2}
    body |= {"messages": [{"role": "user", "content": "Hi"}]} if chat else {"prompt": "Hi"}
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True))
    for name in names:
        body[name] = draw(FIELDS[name])
    if draw(st.booleans()):
        body[draw(texts)] = draw(values)  # a field nobody declared, maybe not even Unicode
    return chat, body


MODEL = None


@pytest.fixture(scope="module")
def router(redis_server, demo_model_dir):
    global MODEL
    MODEL = demo_model_dir.name
    model = ["--model", str(demo_model_dir)]
    prefix = ["--redis-prefix", "fuzz:"]  # its own cluster on the session's Redis
    worker = WorkerProcess("decode", model, redis_server.url, ["--role", "both", *prefix])
    router = RouterProcess(redis_server.url, [*model, *prefix, "--max-tokens-default", "4"],
                           wait_for=(0, 1))
    yield router
    router.stop()
    worker.stop()


def check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    else:
        assert r.status_code == 200


def test_hostile_bodies_never_get_5xx_and_keep_the_connection(router):
    statuses = Counter()
    with httpx.Client(base_url=router.url, timeout=120) as http:

        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(hostile_bodies())
        def check(case):
            chat, body = case
            path = "/v1/chat/completions" if chat else "/v1/completions"
            # ensure_ascii escapes lone surrogates (\ud800) and writes NaN/Infinity, as a
            # hostile client's JSON could.
            sent = json.dumps(body)
            r = http.post(path, content=sent.encode(),
                          headers={"content-type": "application/json"})
            check_answer(r)
            statuses[r.status_code] += 1
            if r.status_code == 400 and r.json()["error"]["code"] != "context_length_exceeded":
                param = r.json()["error"]["param"]
                if param is not None:  # the field it names is one the body carries, as
                    # the router decoded it (escaped surrogate pairs become one character)
                    assert param.split(".")[0] in json.loads(sent), (param, body)

        check()
        print("statuses:", dict(statuses))
        assert statuses[200] > 0 and statuses[400] > 0  # both refusals and served requests
        # The connection survived every answer: one more valid request on it.
        check_answer(http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi",
                                                        "max_tokens": 1}))


RAW = [b"\xff\xfe{}", b"[" * 100_000, b"[]", b'"text"', b"null", b'{"model": 1e999}',
       b'{"model": "m", "prompt": "\\ud800"}', b'{"model": "m", "prompt": [' + b"1," * 1000
       + b"-1]}", b"{" + b'"a": 1,' * 10_000 + b'"b": 2}']


@pytest.mark.parametrize("raw", RAW, ids=[repr(r[:16]) for r in RAW])
def test_raw_hostile_bytes(router, raw):
    for path in ("/v1/chat/completions", "/v1/completions"):
        check_answer(httpx.post(router.url + path, content=raw,
                                headers={"content-type": "application/json"}, timeout=60))
