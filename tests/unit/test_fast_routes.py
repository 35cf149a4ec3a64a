"""router/fast_routes.py: what it serves itself, and that everything else reaches the app behind
it with the body intact (so FastAPI's refusals stay FastAPI's)."""

import asyncio
import json

from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse

from router import fast_routes
from router.errors import APIError
from router.fast_routes import CompletionFastPath


class Body(BaseModel):
    model_config = ConfigDict(strict=True)  # as router/openai_schema.py's
    model: str
    n: int = 1


def run(body: bytes, content_type: bytes | None = b"application/json", path="/v1/x",
        method="POST", key_ok=True):
    """One request through the fast path; (who answered, status, what the app received)."""
    seen = {}

    async def app(scope, receive, send):
        seen["app_body"] = (await receive())["body"]
        await JSONResponse({"from": "app"}, status_code=422)(scope, receive, send)

    async def handler(parsed, request, api_key):
        if parsed.model == "refuse":
            raise APIError(400, "no such model", code="model_not_found")
        seen["handler"] = (parsed, api_key)
        return JSONResponse({"from": "handler"})

    fast = CompletionFastPath(app, {"/v1/x": (Body, handler)},
                              key_of=lambda scope: (key_ok, "k1" if key_ok else None))
    headers = [(b"content-type", content_type)] if content_type else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "query_string": b"", "state": {}}
    chunks = [body[:3], body[3:]]
    sent = []

    async def receive():
        if chunks:
            part = chunks.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(chunks)}
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    asyncio.run(fast(scope, receive, send))
    answer = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] ==
                                 "http.response.body"))
    return answer.get("from", answer), sent[0]["status"], seen


def test_a_valid_json_body_is_served_by_the_handler():
    who, status, seen = run(b'{"model": "demo", "n": 2}')
    assert (who, status) == ("handler", 200)
    assert seen["handler"][0] == Body(model="demo", n=2) and seen["handler"][1] == "k1"
    assert "app_body" not in seen
    assert run(b'{"model": "demo"}', content_type=None)[0] == "handler"  # FastAPI: JSON too
    assert run(b'{"model": "demo"}', b"application/json; charset=utf-8")[0] == "handler"


def test_the_handlers_api_errors_answer_in_the_api_shape():
    who, status, _ = run(b'{"model": "refuse"}')
    assert status == 400 and who["error"]["code"] == "model_not_found"


def test_everything_else_reaches_the_app_with_its_body():
    cases = [dict(body=b'{"model": 5}'),  # fails validation
             dict(body=b'{"model": "demo"'),  # not JSON
             dict(body=b""),  # empty
             dict(body=b'{"model": "demo"}', key_ok=False),
             dict(body=b'{"model": "demo"}', path="/v1/other"),
             dict(body=b'{"model": "demo"}', method="PUT")]
    for case in cases:
        who, status, seen = run(**case)
        assert (who, status) == ("app", 422), case
        assert "handler" not in seen
        assert seen["app_body"] in (case["body"], case["body"][:3]), case


def test_a_body_that_is_not_json_by_its_type_gets_415_naming_it():
    for kind in (b"text/plain", b"application/x-www-form-urlencoded"):
        who, status, seen = run(b'{"model": "demo"}', content_type=kind)
        assert status == 415 and "handler" not in seen and "app_body" not in seen
        assert who["error"]["code"] == "unsupported_media_type"
        assert kind.decode() in who["error"]["message"]


def test_a_large_body_is_parsed_off_the_loop_and_refused_there_in_the_apps_words():
    pad = " " * (fast_routes.OFF_LOOP_BODY_BYTES + 1)
    who, status, seen = run(b'{"model": "demo", "n": 3}' + pad.encode())
    assert (who, status) == ("handler", 200) and seen["handler"][0].n == 3
    who, status, seen = run(b'{"model": "demo", "n": "3"}' + pad.encode())
    assert status == 400 and "app_body" not in seen  # not parsed a second time by the app
    assert who["error"]["param"] == "n"
    who, status, _ = run(b'{"model": ' + pad.encode())
    assert status == 400 and "not valid JSON" in who["error"]["message"]


def test_a_body_too_deep_to_parse_reaches_the_app():
    """json.loads raises RecursionError, not a ValueError, on deep nesting: FastAPI answers."""
    body = b"[" * 100_000
    who, status, seen = run(body)
    assert (who, status) == ("app", 422) and "handler" not in seen
