"""Output that stops inside a multi-byte character keeps its last bytes, as U+FFFD: the text
equals the tokenizer's decode of the returned tokens (what HF and OpenAI return)."""

import pytest

from common.sampling_params import SamplingParams
from engine.text.output_processor import TextOutput
from engine.text.tokenizer import Tokenizer

TEXT = "café 😀 日本語 ok 🎉🚀"


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir):
    return Tokenizer.from_dir(demo_model_dir)


def stream(tokenizer, token_ids, params=SamplingParams()):
    """The text a client receives: one delta per token, as the engine emits them."""
    out = TextOutput(tokenizer, params)
    deltas = []
    for i, token in enumerate(token_ids):
        out.add_tokens([token])
        deltas.append(out.take_delta(finished=i == len(token_ids) - 1))
    return "".join(deltas)


def test_every_cut_of_a_multibyte_text_streams_its_full_decode(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    cuts = range(1, len(ids) + 1)
    mid_character = [k for k in cuts if tokenizer.decode(ids[:k]).endswith("\ufffd")]
    assert len(mid_character) >= 3  # the emoji and the CJK split across byte tokens
    for k in cuts:
        assert stream(tokenizer, ids[:k]) == tokenizer.decode(ids[:k]), k


def test_emoji_cut_after_its_first_byte_token(tokenizer):
    grin = tokenizer.encode("😀", add_special_tokens=False)
    assert len(grin) == 3  # 4 UTF-8 bytes over 3 byte-level tokens
    for k in (1, 2):
        got = stream(tokenizer, tokenizer.encode("Hi", add_special_tokens=False) + grin[:k])
        assert got.startswith("Hi") and got.endswith("\ufffd")
        assert got == tokenizer.decode(tokenizer.encode("Hi", add_special_tokens=False)
                                       + grin[:k])


def test_a_prefill_handoff_keeps_the_incomplete_character_for_the_decode_worker(tokenizer):
    ids = tokenizer.encode("😀 ok", add_special_tokens=False)
    params = SamplingParams(max_tokens=len(ids))
    prefill = TextOutput(tokenizer, params)  # stops after the first token, hands the KV over
    prefill.add_tokens(ids[:1])
    first_text = prefill.take_delta(finished=True, handing_off=True)
    assert first_text == ""  # not U+FFFD: the next tokens complete the character
    decode = TextOutput(tokenizer, params)
    decode.add_sent_tokens(ids[:1])
    rest = []
    for i, token in enumerate(ids[1:], start=2):
        decode.add_tokens([token])
        rest.append(decode.take_delta(finished=i == len(ids)))
    assert first_text + "".join(rest) == "😀 ok"


def test_a_stop_string_still_cuts_the_text(tokenizer):
    ids = tokenizer.encode("ab 😀", add_special_tokens=False)
    assert stream(tokenizer, ids[:-1], SamplingParams(stop=("b",))) == "a"


def test_the_engine_returns_the_decode_of_its_tokens(demo_model_dir):
    from engine import LLM

    with LLM(str(demo_model_dir)) as llm:
        messages = [{"role": "user", "content": "Repeat exactly: 😀🎉🚀 日本語 café"}]
        greedy = SamplingParams(temperature=0, max_tokens=40)
        ids = llm.chat(messages, greedy)[0].token_ids
        cuts = [k for k in range(1, len(ids) + 1)
                if llm.tokenizer.decode(ids[:k]).endswith("\ufffd")]
        assert cuts, f"the model wrote no multi-byte character: {llm.tokenizer.decode(ids)!r}"
        out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=cuts[-1]))[0]
        assert out.token_ids == ids[:cuts[-1]]
        assert out.text == llm.tokenizer.decode(out.token_ids)
        assert out.text.endswith("\ufffd")
