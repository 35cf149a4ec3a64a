"""Stop strings in the text output (engine/text/output_processor.py): a stream holds back only
the tail that could begin a stop string, so a long stop string does not hold back a whole
answer; the text streamed equals the text returned at once; stop strings count only from
``min_tokens`` on."""

import pytest

from common.sampling_params import SamplingParams
from engine.text.output_processor import TextOutput, _tail_starting
from engine.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir):
    return Tokenizer.from_dir(demo_model_dir)


def _deltas(tokenizer, text: str, params: SamplingParams) -> tuple[list[str], bool]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    out = TextOutput(tokenizer, params)
    deltas = []
    for i, token in enumerate(ids):
        stopped = out.add_tokens([token])
        deltas.append(out.take_delta(finished=stopped or i == len(ids) - 1))
        if stopped:
            return deltas, True
    return deltas, False


def test_tail_starting_finds_the_longest_tail_that_begins_the_stop():
    assert _tail_starting("hello wor", "world!", 0) == 3
    assert _tail_starting("hello w", "world!", 0) == 1
    assert _tail_starting("hello", "world!", 0) == 0
    assert _tail_starting("aaaa", "aaab", 0) == 3  # the longest of the overlapping tails
    assert _tail_starting("xab", "abc", 3) == 0  # already sent: not held back


def test_a_long_stop_string_holds_back_only_what_could_begin_it(tokenizer):
    text = "one two three four five six seven"
    deltas, stopped = _deltas(tokenizer, text, SamplingParams(stop=("x" * 1000,)))
    assert not stopped and "".join(deltas) == text
    # Streamed as it came: every token's text out at once (the naive rule held back 999
    # characters, the whole answer, until the end).
    assert sum(1 for d in deltas if d) >= len(deltas) - 1


def test_streamed_text_equals_the_text_without_the_stop_string(tokenizer):
    text = "The answer is 42. Thank you for asking, goodbye now"
    for stop in ("goodbye", "Thank you", "42.", "you for asking, good", "not there"):
        deltas, stopped = _deltas(tokenizer, text, SamplingParams(stop=(stop,)))
        expected = text[:text.find(stop)] if stop in text else text
        assert "".join(deltas) == expected, stop
        assert stopped == (stop in text)
        held = SamplingParams(stop=(stop,), include_stop_str_in_output=True)
        assert "".join(_deltas(tokenizer, text, held)[0]) == (
            text[:text.find(stop) + len(stop)] if stop in text else text)


def test_stop_strings_wait_for_min_tokens(tokenizer):
    text = "a, b, c, d, e, f, g, h"
    ids = tokenizer.encode(text, add_special_tokens=False)
    first_comma = next(k for k in range(1, len(ids) + 1)
                       if "," in tokenizer.decode(ids[:k]))
    early, _ = _deltas(tokenizer, text, SamplingParams(stop=(",",)))
    assert "".join(early) == "a"
    late, stopped = _deltas(tokenizer, text, SamplingParams(stop=(",",),
                                                             min_tokens=first_comma + 2))
    assert stopped
    got = "".join(late)
    assert got.startswith("a, b") and "," not in got[len("a, b"):]
