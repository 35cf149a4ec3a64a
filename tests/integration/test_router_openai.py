"""The router through the official `openai` client, against real workers on the demo model
and real Redis."""

import json

import httpx
import pytest

from engine import SamplingParams
from tests.cluster_helpers import RouterProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
LONG_PROMPT = ("In a quiet village by the sea, an old lighthouse keeper kept a journal of every "
               "ship that passed. One stormy night he wrote:")


def model_name(client) -> str:
    return client.models.list().data[0].id


def test_chat_non_stream_matches_engine(client, reference):
    r = client.chat.completions.create(model=model_name(client), messages=QUESTION,
                                       temperature=0, max_tokens=32)
    expected = reference.chat(QUESTION, SamplingParams(temperature=0, max_tokens=32))[0]
    assert r.choices[0].message.content == expected.text == "The capital of France is Paris."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len(reference.tokenizer.encode_chat(QUESTION))
    assert r.usage.completion_tokens == len(expected.token_ids)
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_stream_matches_non_stream_with_usage(client):
    kwargs = dict(model=model_name(client), messages=QUESTION, temperature=0, max_tokens=32)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={
        "include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    # The second identical prompt hits the prefix cache of whichever worker served it.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0


def test_completions_remote_prefill_match_engine(client, reference):
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    expected = reference.generate(LONG_PROMPT, params)[0].text
    name = model_name(client)
    r = client.completions.create(model=name, prompt=LONG_PROMPT, temperature=0, max_tokens=40,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].text == expected
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=name, prompt=LONG_PROMPT, temperature=0, max_tokens=40, stream=True,
        extra_body={"ignore_eos": True}))
    assert streamed == expected
    ids = reference.tokenizer.encode(LONG_PROMPT)
    by_ids = client.completions.create(model=name, prompt=ids, temperature=0, max_tokens=40,
                                       extra_body={"ignore_eos": True})
    assert by_ids.choices[0].text == expected


def test_logprobs_and_stop(client):
    name = model_name(client)
    r = client.chat.completions.create(model=name, messages=QUESTION, temperature=0,
                                       max_tokens=16, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert content[0].top_logprobs[0].token == content[0].token  # greedy took the top one
    c = client.completions.create(model=name, prompt=LONG_PROMPT, temperature=0, max_tokens=40,
                                  logprobs=2, stop=["\n"])
    assert "\n" not in c.choices[0].text
    assert c.choices[0].logprobs.tokens and len(c.choices[0].logprobs.top_logprobs[0]) == 2
    seeded = [client.completions.create(model=name, prompt=LONG_PROMPT, temperature=1.0,
                                        seed=7, max_tokens=12).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_raw_sse_framing(cluster, client):
    body = {"model": model_name(client), "messages": QUESTION, "temperature": 0,
            "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{cluster[0].url}/v1/chat/completions", json=body,
                      timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["id"].startswith("chatcmpl-")


def test_operator_endpoints(cluster, client):
    url = cluster[0].url
    cluster_view = httpx.get(f"{url}/v1/cluster").json()
    assert cluster_view["pools"] == {"prefill": 1, "decode": 1}
    assert cluster_view["index"]["blocks"] > 0  # built from the workers' KV events
    metrics = httpx.get(f"{url}/metrics").text
    for name in ("pdserve_router_ttft_seconds_bucket", "pdserve_router_itl_seconds",
                 "pdserve_router_e2e_seconds", "pdserve_router_requests_total",
                 "pdserve_router_predicted_cached_tokens_total",
                 "pdserve_router_prefix_hit_ratio"):
        assert name in metrics, name


BAD_INPUTS = [
    ("malformed json", b"{not json", 400),
    ("schema", {"messages": QUESTION, "temperature": 5}, 400),
    ("n", {"messages": QUESTION, "n": 9}, 400),  # at most 8 choices
    ("empty messages", {"messages": []}, 400),
    ("context", {"messages": QUESTION, "max_tokens": 100000}, 400),
    ("unknown model", {"model": "gpt-17", "messages": QUESTION}, 404),
    ("oversized", {"messages": [{"role": "user", "content": "x" * (9 << 20)}]}, 413),
]


@pytest.mark.parametrize("name,body,status", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_status_and_openai_error(cluster, client, name, body, status):
    url = f"{cluster[0].url}/v1/chat/completions"
    if isinstance(body, dict):
        body = json.dumps({"model": model_name(client), **body}).encode()
    r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and "type" in error
    if name == "context":
        assert "maximum context length is" in error["message"]
    assert httpx.get(f"{cluster[0].url}/health").json()["status"] == "ok"


def test_api_keys_and_no_workers(redis_server, demo_model_dir):
    router = RouterProcess(redis_server.url, ["--model", str(demo_model_dir), "--api-key",
                                              "sekret", "--redis-prefix", "empty-cluster:"],
                           wait_for=(0, 0))
    try:
        body = {"model": demo_model_dir.name, "messages": QUESTION}
        url = f"{router.url}/v1/chat/completions"
        assert httpx.post(url, json=body).status_code == 401
        r = httpx.post(url, json=body, headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "no_workers"
        assert httpx.get(f"{router.url}/health").status_code == 200
    finally:
        router.stop()


def test_pdserve_bench_against_the_cluster_and_compare(cluster, tmp_path):
    import subprocess
    import sys

    from tests.cluster_helpers import ROOT

    url = f"{cluster[0].url}/v1"
    outs = []
    for workload in ("random", "shared-prefix"):
        out = tmp_path / f"{workload}.json"
        result = subprocess.run(
            [sys.executable, "-m", "deploy.cli", "bench", "--url", url, "--workload", workload,
             "--num-requests", "12", "--concurrency", "4", "--input-len", "64",
             "--output-len", "8", "--system-len", "64", "--groups", "2", "--turns", "2",
             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        run = json.loads(out.read_text())
        assert run["metrics"]["completed"] == run["metrics"]["num_requests"] > 0
        assert run["metrics"]["ttft_s"]["p50"] > 0
        assert (tmp_path / f"{workload}-plots" / "latency_cdf.png").stat().st_size > 0
        outs.append(out)
    shared = json.loads(outs[1].read_text())
    assert shared["metrics"]["cached_token_share"] > 0  # later turns reuse earlier ones
    compare = subprocess.run([sys.executable, "-m", "deploy.cli", "bench", "--compare",
                              *map(str, outs), "--plot-dir", str(tmp_path / "cmp")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert compare.returncode == 0, compare.stderr
    assert "shared-prefix" in compare.stdout and (tmp_path / "cmp" / "latency_cdf.png").exists()


# -- the API boundary under hostile input (issue 14, items 2, 3, 9, 10, 15) -------------------
HOSTILE = [
    ("seed", {"messages": QUESTION, "seed": 2**63}),
    ("seed", {"messages": QUESTION, "seed": -(2**63) - 1}),
    ("top_k", {"messages": QUESTION, "top_k": 2**31}),
    ("prompt", {"prompt": [-1]}), ("prompt", {"prompt": [4294967296]}),
    ("prompt", {"prompt": [[-1]]}), ("prompt", {"prompt": [10**6]}),  # beyond the vocabulary
    ("messages.0.content", {"messages": [{"role": "user", "content": "\ud800"}]}),
    ("prompt", {"prompt": "a\ud800b"}), ("stop", {"messages": QUESTION, "stop": ["\udfff"]}),
    ("cache_salt", {"messages": QUESTION, "cache_salt": "\ud800"}),
    ("model", {"model": "\ud800", "messages": QUESTION}),
    ("user", {"messages": QUESTION, "user": "\ud800"}),
    ("tools", {"messages": QUESTION, "tools": [{"type": "function",
                                                "function": {"name": "f"}}]}),
    ("response_format", {"messages": QUESTION, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}}),
    ("logit_bias", {"messages": QUESTION, "logit_bias": {"5": 500}}),
    ("logit_bias", {"messages": QUESTION, "logit_bias": {"10000000": 1}}),  # past the vocabulary
    ("min_tokens", {"messages": QUESTION, "min_tokens": 5}),  # above max_tokens (2)
    ("stream_options.continuous_usage_stats", {"messages": QUESTION, "stream": True,
                                               "stream_options": {"continuous_usage_stats": "x"}}),
    ("tool_choice", {"messages": QUESTION, "tool_choice": "required"}),  # and no tools
    # Session 16's audit: wrong JSON types are refused, not coerced...
    ("max_tokens", {"messages": QUESTION, "max_tokens": "5"}),
    ("max_tokens", {"messages": QUESTION, "max_tokens": True}),
    ("stream", {"messages": QUESTION, "stream": "true"}),
    # ...fields that ask for nothing as sent are refused by name...
    ("top_logprobs", {"messages": QUESTION, "top_logprobs": 3}),  # without logprobs
    ("stream_options", {"messages": QUESTION, "stream_options": {"include_usage": True}}),
    ("response_format.json_schema", {"messages": QUESTION, "response_format": {
        "type": "json_object", "json_schema": {"name": "x", "schema": {"type": "integer"}}}}),
    ("response_format", {"messages": QUESTION, "response_format": {  # only itself: no output
        "type": "json_schema", "json_schema": {"name": "x", "schema": {
            "$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}}}}),
    ("tools.0.function.parameters", {"messages": QUESTION, "tool_choice": "required", "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "banana"}}}]}),
    ("messages.1.tool_call_id", {"messages": [*QUESTION, {"role": "tool", "content": "22C"}]}),
    ("messages.1.tool_call_id", {"messages": [*QUESTION, {"role": "tool", "content": "22C",
                                                          "tool_call_id": "no-such-call"}]}),
    ("stop", {"messages": QUESTION, "stop": ["x" * 2000]}),
    # ...and a prompt too long by itself is blamed on the prompt, not on max_tokens.
    ("prompt", {"prompt": [504] * 20000}),
    ("frobnicate", {"messages": QUESTION, "frobnicate": True}),
]


def _post(http, url: str, body: dict):
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    # json.dumps escapes lone surrogates as \ud800, as a hostile client's JSON would carry them.
    return http.post(url + path, content=json.dumps(body).encode(),
                     headers={"content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize("param,body", HOSTILE, ids=[f"{i}-{h[0]}" for i, h in enumerate(HOSTILE)])
def test_hostile_input_gets_400_naming_the_param_and_keeps_the_connection(cluster, client,
                                                                          param, body):
    url = cluster[0].url
    with httpx.Client() as http:
        r = _post(http, url, {"model": model_name(client), "max_tokens": 2, **body})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
        stream = r.extensions["network_stream"]
        ok = _post(http, url, {"model": model_name(client), "messages": QUESTION,
                               "max_tokens": 2})
        assert ok.status_code == 200, ok.text
        assert ok.extensions["network_stream"] is stream  # the same keep-alive connection


def test_defaults_of_unimplemented_fields_are_accepted(cluster, client):
    r = _post(httpx, cluster[0].url, {
        "model": model_name(client), "messages": [*QUESTION, {
            "role": "assistant", "content": "Paris.", "tool_calls": [], "refusal": None},
            *QUESTION],
        "max_tokens": 2, "tools": [], "tool_choice": "none", "parallel_tool_calls": True,
        "response_format": {"type": "text"}, "logit_bias": None, "n": 1,
        "stream_options": None, "functions": None})
    assert r.status_code == 200, r.text


def test_logprobs_carry_the_bytes_of_tokens_inside_a_character(client):
    r = client.chat.completions.create(
        model=model_name(client), temperature=0, max_tokens=12, logprobs=True, top_logprobs=2,
        messages=[{"role": "user", "content": "Repeat exactly: 😀😀😀 日本語"}])
    content = r.choices[0].logprobs.content
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "ignore")
    assert joined.startswith(r.choices[0].message.content.rstrip("\ufffd"))
    assert any("\\x" in e.token for e in content), "the answer split no character"
    assert all("\ufffd" not in e.token for e in content)
    stream = client.completions.create(model=model_name(client), prompt="Smiley emoji: 😀😀",
                                       temperature=0, max_tokens=8, logprobs=1)
    lp = stream.choices[0].logprobs
    assert lp.text_offset == sorted(lp.text_offset)
    assert lp.text_offset[-1] <= len(stream.choices[0].text)


def test_a_body_that_is_not_json_by_its_type_gets_415(cluster, client):
    r = httpx.post(f"{cluster[0].url}/v1/chat/completions", content=json.dumps(
        {"model": model_name(client), "messages": QUESTION}), timeout=30,
        headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_unknown_paths_and_methods_get_openai_errors(cluster):
    url = cluster[0].url
    for method, path, status in [("GET", "/v1/nope", 404), ("POST", "/v2/chat", 404),
                                 ("GET", "/v1/chat/completions", 405),
                                 ("DELETE", "/v1/models", 405)]:
        r = httpx.request(method, url + path)
        assert r.status_code == status, (method, path, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "POST" in httpx.get(url + "/v1/completions").headers["allow"]


def test_chunked_body_over_the_limit_gets_413(cluster):
    def chunks():  # no Content-Length: the size is only known while reading
        yield b'{"model": "x", "prompt": "'
        for _ in range(9):
            yield b"x" * (1 << 20)
        yield b'"}'

    r = httpx.post(f"{cluster[0].url}/v1/completions", content=chunks(),
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"


def test_tiny_top_p_means_only_the_top_token(client):
    name = model_name(client)
    greedy = client.completions.create(model=name, prompt=LONG_PROMPT, temperature=0,
                                       max_tokens=8).choices[0].text
    tiny = client.completions.create(model=name, prompt=LONG_PROMPT, temperature=1.0,
                                     top_p=5e-324, max_tokens=8, seed=3).choices[0].text
    assert tiny == greedy  # refused before as "top_p must be in (0, 1], got 0.0"


def test_huge_prompt_is_refused_by_length_without_tokenizing(cluster, client):
    r = _post(httpx, cluster[0].url, {"model": model_name(client), "prompt": "x" * (7 << 20)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "characters" in r.json()["error"]["message"]


def test_tokenizing_a_big_prompt_leaves_the_event_loop_free(redis_server, demo_model_dir):
    """A 6 MB prompt under a (fake) huge context is tokenized (seconds): /health must answer
    while that request is still in flight."""
    import threading

    router = RouterProcess(redis_server.url, ["--model", str(demo_model_dir),
                                              "--max-model-len", "100000000"], wait_for=(0, 0))
    try:
        uploaded = threading.Event()

        def body():
            yield json.dumps({"model": demo_model_dir.name, "max_tokens": 10**9,
                              "prompt": "hello world, " * 500_000}).encode()
            uploaded.set()

        result = {}

        def big():
            result["r"] = httpx.post(f"{router.url}/v1/completions", content=body(),
                                     headers={"content-type": "application/json"}, timeout=300)

        thread = threading.Thread(target=big)
        thread.start()
        assert uploaded.wait(60)
        thread.join(0.5)  # let the router parse the JSON and start tokenizing
        with httpx.Client() as http:
            for _ in range(5):
                assert http.get(f"{router.url}/health", timeout=300).status_code == 200
        assert thread.is_alive(), "the big request finished before /health could answer"
        thread.join(300)
        assert result["r"].status_code == 400
        assert result["r"].json()["error"]["code"] == "context_length_exceeded"
    finally:
        router.stop()


def test_max_tokens_default_and_lenient(cluster, redis_server, demo_model_dir):
    router = RouterProcess(redis_server.url, ["--model", str(demo_model_dir), "--lenient",
                                              "--max-tokens-default", "3"], wait_for=(1, 1))
    try:
        lenient = openai.OpenAI(base_url=f"{router.url}/v1", api_key="x", max_retries=0)
        for _ in range(2):
            r = lenient.chat.completions.create(
                model=demo_model_dir.name, messages=QUESTION,
                extra_body={"ignore_eos": True, "frobnicate": 1})
            assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
        warnings = [line for line in router.log_lines
                    if "ignoring request field 'frobnicate'" in line]
        assert len(warnings) == 1, router.log_lines[-20:]
    finally:
        router.stop()
