"""The router's door with API keys (issue 17): the key is checked from the headers before the
body is read or parsed, probes stay open, everything else (unknown paths, the API docs) needs
the key, and the docs are off unless asked for. A real router process, real HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.cluster_helpers import RouterProcess

KEY = "sekret-key"


@pytest.fixture(scope="module")
def router(redis_server, demo_model_dir):
    r = RouterProcess(redis_server.url, ["--model", str(demo_model_dir), "--api-key", KEY,
                                         "--redis-prefix", "auth-test:"], wait_for=(0, 0))
    yield r
    r.stop()


def test_a_bad_key_is_refused_before_the_body_is_parsed(router):
    url = f"{router.url}/v1/chat/completions"
    # Not JSON at all: with the key it is a 400 (parsed); without, a 401 (never parsed).
    garbage = b"{this is not json"
    no_key = httpx.post(url, content=garbage, headers={"content-type": "application/json"})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["code"] == "invalid_api_key"
    assert no_key.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, content=garbage, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    with_key = httpx.post(url, content=garbage, headers={
        "content-type": "application/json", "Authorization": f"bearer {KEY}"})  # any case
    assert with_key.status_code == 400


def test_probes_are_open_and_everything_else_needs_the_key(router):
    assert httpx.get(f"{router.url}/health").status_code == 200
    assert httpx.get(f"{router.url}/ready").status_code == 503  # no workers, but not 401
    assert httpx.get(f"{router.url}/metrics").status_code == 200
    for path in ("/v1/models", "/v1/cluster", "/no/such/path", "/docs", "/openapi.json"):
        assert httpx.get(f"{router.url}{path}").status_code == 401, path
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{router.url}/v1/models", headers=auth).status_code == 200
    assert httpx.get(f"{router.url}/no/such/path", headers=auth).status_code == 404
    # The interactive docs are off unless the router was started with --docs.
    assert httpx.get(f"{router.url}/docs", headers=auth).status_code == 404
    assert httpx.get(f"{router.url}/openapi.json", headers=auth).status_code == 404


def test_docs_when_asked_for(redis_server, demo_model_dir):
    r = RouterProcess(redis_server.url, ["--model", str(demo_model_dir), "--docs",
                                         "--redis-prefix", "auth-docs-test:"], wait_for=(0, 0))
    try:
        assert httpx.get(f"{r.url}/openapi.json").status_code == 200
        assert httpx.get(f"{r.url}/docs").status_code == 200
    finally:
        r.stop()
