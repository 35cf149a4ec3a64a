"""Tenant isolation of the prefix cache (issue 17): with API keys, each key caches in a
namespace of its own, so one key's cached prefix never shows in another key's cached_tokens;
sharing across keys is an explicit opt-in. Real workers, real routers, the openai client."""

from __future__ import annotations

import uuid

import pytest

from tests.cluster_helpers import RouterProcess, WorkerProcess

pytest.importorskip("nixl_cu12", reason="needs the nixl extra")
openai = pytest.importorskip("openai")

KEYS = ("key-tenant-a", "key-tenant-b")


@pytest.fixture(scope="module")
def workers(redis_server, demo_model_dir):
    model = ["--model", str(demo_model_dir)]
    prefix = ["--redis-prefix", "tenancy-test:"]
    prefill = WorkerProcess("prefill", model + prefix, redis_server.url)
    decode = WorkerProcess("decode", model + prefix, redis_server.url)
    yield model + prefix, demo_model_dir.name
    for w in (prefill, decode):
        w.stop()


def _router(redis_server, args: list[str]) -> RouterProcess:
    keys = [a for k in KEYS for a in ("--api-key", k)]
    return RouterProcess(redis_server.url, args + keys, wait_for=(1, 1))


def _cached(router: RouterProcess, model: str, key: str, prompt: str) -> int:
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0)
    r = client.completions.create(model=model, prompt=prompt, max_tokens=2, temperature=0)
    return r.usage.prompt_tokens_details.cached_tokens


def _prompt() -> str:
    # ~90 tokens, unique per test: several full blocks, more than the local-prefill threshold.
    return (f"Tenant note {uuid.uuid4().hex}: " +
            "the quarterly figures and the account details below are confidential. " * 6)


def test_keys_do_not_see_each_others_cache(redis_server, workers):
    args, model = workers
    router = _router(redis_server, args)
    try:
        prompt = _prompt()
        assert _cached(router, model, KEYS[0], prompt) == 0
        assert _cached(router, model, KEYS[0], prompt) > 0  # hits within a key
        assert _cached(router, model, KEYS[1], prompt) == 0  # none across keys
        assert _cached(router, model, KEYS[1], prompt) > 0
        # A guessed cache_salt does not reach into another key's namespace either.
        salted = _prompt()
        client_a = openai.OpenAI(base_url=f"{router.url}/v1", api_key=KEYS[0], max_retries=0)
        client_b = openai.OpenAI(base_url=f"{router.url}/v1", api_key=KEYS[1], max_retries=0)
        for _ in range(2):
            a = client_a.completions.create(model=model, prompt=salted, max_tokens=2,
                                            extra_body={"cache_salt": "tenant-A"})
        assert a.usage.prompt_tokens_details.cached_tokens > 0
        b = client_b.completions.create(model=model, prompt=salted, max_tokens=2,
                                        extra_body={"cache_salt": "tenant-A"})
        assert b.usage.prompt_tokens_details.cached_tokens == 0
        with pytest.raises(openai.BadRequestError) as err:
            client_a.completions.create(model=model, prompt=salted, max_tokens=2,
                                        extra_body={"cache_salt": ""})
        assert err.value.body["param"] == "cache_salt"
    finally:
        router.stop()


def test_sharing_across_keys_is_an_explicit_opt_in(redis_server, workers):
    args, model = workers
    router = _router(redis_server, args + ["--share-cache-across-keys"])
    try:
        prompt = _prompt()
        assert _cached(router, model, KEYS[0], prompt) == 0
        assert _cached(router, model, KEYS[1], prompt) > 0
    finally:
        router.stop()
