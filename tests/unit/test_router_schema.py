"""The router's request schema and boundary checks, without a server: widths of the wire, valid
Unicode, float32 honesty, fields we do not implement, the prompt-length bound and the
GIL-releasing tokenization."""

import asyncio
import json
import logging

import pytest
from pydantic import ValidationError

from router.openai_schema import (
    SMALLEST_FLOAT32,
    ChatCompletionRequest,
    CompletionRequest,
    float32,
)
from router.prompt_bound import max_chars_per_token
from router.request_validation import refuse_unsupported, unsupported_fields, validation_error

HI = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return ChatCompletionRequest.model_validate({"model": "m", "messages": HI, **fields})


def completion(**fields):
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **fields})


HOSTILE = [
    ("seed", chat, {"seed": 2**63}), ("seed", chat, {"seed": -(2**63) - 1}),
    ("top_k", chat, {"top_k": 2**31}), ("max_tokens", chat, {"max_tokens": 2**32}),
    ("max_tokens", completion, {"max_tokens": 2**32}),
    ("temperature", chat, {"temperature": float("nan")}),
    ("top_p", chat, {"top_p": float("inf")}),
    ("prompt", completion, {"prompt": [-1]}), ("prompt", completion, {"prompt": [2**32]}),
    ("prompt", completion, {"prompt": [[-1]]}), ("prompt", completion, {"prompt": [1.5]}),
    ("prompt", completion, {"prompt": [True]}), ("prompt", completion, {"prompt": "\ud800"}),
    ("prompt", completion, {"prompt": ["\udfff"]}), ("prompt", completion, {"prompt": {}}),
    ("messages.0.content", chat, {"messages": [{"role": "user", "content": "\ud800"}]}),
    ("messages.0.content", chat, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a\ud800"}]}]}),
    ("messages.0.content", chat, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}),
    ("messages.0.name", chat, {"messages": [{"role": "user", "content": "x", "name": "\ud800"}]}),
    ("stop", chat, {"stop": ["\ud800"]}), ("stop", chat, {"stop": [1]}),
    ("cache_salt", chat, {"cache_salt": "\ud800"}), ("model", chat, {"model": "\ud800"}),
    ("user", chat, {"user": "\udbff"}),
]


@pytest.mark.parametrize("param,make,fields", HOSTILE,
                         ids=[f"{h[0]}-{json.dumps(h[2])[:40]}" for h in HOSTILE])
def test_hostile_values_are_refused_naming_the_param(param, make, fields):
    with pytest.raises(ValidationError) as info:
        make(**fields)
    error = validation_error([{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()])
    assert error.status == 400 and error.param == param, error.message
    json.dumps(error.body(), ensure_ascii=False).encode("utf-8")  # the response can be sent


def test_widest_valid_values_pass():
    body = chat(seed=2**63 - 1, top_k=2**31 - 1, max_tokens=2**32 - 1)
    assert body.seed == 2**63 - 1 and body.top_k == 2**31 - 1
    assert completion(prompt=[0, 2**32 - 1]).prompt == [0, 2**32 - 1]
    assert completion(prompt=[[1, 2]]).prompt == [[1, 2]]


def test_tiny_top_p_is_kept_positive_on_the_float32_wire():
    assert float32(5e-324) == 0.0  # what made the worker say "got 0.0"
    p = chat(top_p=5e-324).top_p
    assert p == SMALLEST_FLOAT32 and float32(p) > 0.0
    assert chat(top_p=0.9).top_p == 0.9


def test_temperatures_below_the_epsilon_are_greedy():
    # The sampler floors temperature at 1e-5 while float32 turns 1e-300 into 0 (greedy):
    # everything below 1e-5 is now greedy, stated in the schema.
    assert chat(temperature=1e-300).temperature == 0.0
    assert chat(temperature=1e-6).temperature == 0.0
    assert chat(temperature=1e-5).temperature == 1e-5
    assert chat().temperature is None


NOT_IMPLEMENTED = [
    ("messages.0.refusal", {"messages": [{"role": "assistant", "content": "x",
                                          "refusal": "no"}]}),
    ("frobnicate", {"frobnicate": 1}),
]


@pytest.mark.parametrize("param,fields", NOT_IMPLEMENTED, ids=[n[0] for n in NOT_IMPLEMENTED])
def test_fields_we_do_not_implement_are_refused_by_name(param, fields):
    body = chat(**fields)
    with pytest.raises(Exception) as info:
        refuse_unsupported(body, lenient=False)
    assert info.value.status == 400 and info.value.param == param
    assert info.value.code in ("unsupported_parameter", "unknown_parameter")


INERT = [{"tools": []}, {"tools": None}, {"tool_choice": "none"}, {"parallel_tool_calls": True},
         {"response_format": {"type": "text"}}, {"logit_bias": {}}, {"logit_bias": None},
         {"min_tokens": 0}, {"repetition_penalty": 1}, {"include_stop_str_in_output": False},
         {"stream_options": {"include_usage": True, "continuous_usage_stats": False}},
         {"messages": [{"role": "assistant", "content": "x", "tool_calls": [],
                        "refusal": None}]},
         {"n": 1}, {"store": False}, {"anything_null": None}]


@pytest.mark.parametrize("fields", INERT, ids=[json.dumps(f)[:50] for f in INERT])
def test_default_values_that_ask_for_nothing_are_accepted(fields):
    assert unsupported_fields(chat(**fields)) == []


def test_lenient_ignores_with_one_warning_per_field(caplog):
    caplog.set_level(logging.WARNING, logger="router.request_validation")
    for _ in range(3):
        refuse_unsupported(chat(logit_bias={"1": 2}, lenient_test_field=1,
                                lenient_other_field=[1]), lenient=True)
    warned = [r.getMessage() for r in caplog.records]
    assert sum("'logit_bias'" in m for m in warned) == 0  # honoured now: nothing to warn about
    assert sum("'lenient_test_field'" in m for m in warned) == 1
    assert sum("'lenient_other_field'" in m for m in warned) == 1


# -- prompt-length bound and tokenization ------------------------------------------------------
@pytest.fixture(scope="module")
def model(demo_model_dir):
    from router.config import RouterConfig
    from router.model_info import ModelInfo

    return ModelInfo.load(RouterConfig(model=str(demo_model_dir)))


def test_demo_bound_holds_on_its_most_compressible_text(model):
    assert model.vocab_size == 49152
    bound = model.chars_per_token
    assert bound == 81  # "\n" + 80 spaces is one token of SmolLM2's vocabulary
    for text in ["\n" + " " * 80, ("\n" + " " * 80) * 50, "#" * 8000, "hello world " * 500,
                 "1234567890" * 100, "<|im_start|>" * 100, "é" * 1000]:
        ids = model.tokenizer.encode(text)
        assert len(ids) >= len(text) / bound, text[:20]


def _spec(**parts) -> str:
    base = {"normalizer": None, "pre_tokenizer": {"type": "ByteLevel"}, "truncation": None,
            "model": {"type": "BPE", "byte_fallback": False, "fuse_unk": False}}
    return json.dumps({**base, **parts})


def test_bound_refuses_to_guess_for_tokenizers_that_can_drop_text():
    vocab = {"abc": 0, "d": 1}
    assert max_chars_per_token(_spec(), vocab) == 3
    assert max_chars_per_token(_spec(normalizer={"type": "NFC"}), vocab) == 12
    for unsafe in [{"normalizer": {"type": "Strip"}},
                   {"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"},
                                                                       {"type": "Strip"}]}},
                   {"pre_tokenizer": {"type": "Whitespace"}},
                   {"pre_tokenizer": {"type": "Split", "behavior": "Removed"}},
                   {"model": {"type": "WordPiece"}}, {"pre_tokenizer": None},
                   {"truncation": {"max_length": 10}}]:
        assert max_chars_per_token(_spec(**unsafe), vocab) is None, unsafe


def test_long_prompt_is_refused_by_length_before_tokenizing(model):
    from router.errors import APIError

    # 81 chars/token * 100 tokens: 8,101 characters cannot fit a 100-token context.
    with pytest.raises(APIError) as info:
        asyncio.run(model.encode_prompt("x" * 8101, max_model_len=100))
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"
    assert len(asyncio.run(model.encode_prompt("x" * 8100, max_model_len=100))) > 0


def test_off_loop_tokenization_matches_and_lets_the_loop_run(model):
    texts = ["hi", "The capital of France is Paris. " * 300, "<|im_start|>user\nx"]
    for text in texts:
        assert asyncio.run(model.encode_prompt(text, 10**9)) == model.tokenizer.encode(text)
    messages = [{"role": "user", "content": "What is 2+2? " * 1000}]
    assert asyncio.run(model.encode_chat(messages, 10**9)) == \
        model.tokenizer.encode_chat(messages)

    async def ticks_during_big_encode() -> int:
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        await model.encode_prompt("hello world, " * 200_000, 10**9)
        task.cancel()
        return ticks

    ticks = asyncio.run(ticks_during_big_encode())
    assert ticks > 10  # the loop kept running while 2.6 M characters were tokenized
