"""Tool-call and reasoning parsers on text as the models write it: the deltas of a stream,
split at every character boundary and fed one character at a time, add up to exactly what
the whole text gives."""

import json

import pytest

from router.output_deltas import CallArgs, CallStart, Content, Reasoning, merged
from router.reasoning import make as make_reasoning
from router.reasoning.think import ThinkParser
from router.tool_parsers import PARSERS, detect
from router.tool_parsers.forced import (
    NamedParser,
    RequiredParser,
    schema_for_named,
    schema_for_required,
)

jsonschema = pytest.importorskip("jsonschema")

# Recorded outputs (Qwen2.5-7B-Instruct, Llama-3.1-8B-Instruct, Mistral-7B-Instruct-v0.3 and
# Mistral-Small-3.2 style), with what each must give: (content, [(name, arguments)]).
RECORDED = [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
               '"celsius"}}\n</tool_call>',
     "", [("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    ("hermes", 'I will check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
               '"Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
               '{"zone": "CET", "q": "a}\\"b"}}\n</tool_call>',
     "I will check both.", [("get_weather", '{"city": "Paris"}'),
                            ("get_time", '{"zone": "CET", "q": "a}\\"b"}')]),
    ("hermes", '<tool_call>\n{"arguments": {"x": 1}, "name": "f"}\n</tool_call>', "",
     [("f", '{"x": 1}')]),
    ("hermes", "The answer is 4 < 5, no <tool_ needed.", "The answer is 4 < 5, no <tool_ needed.",
     []),
    ("hermes", "<tool_call>\nnot json\n</tool_call>", "<tool_call>\nnot json\n</tool_call>", []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}', "",
     [("get_weather", '{"city": "Paris"}')]),
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", '
                    '"parameters": {"n": [1, 2]}}', "", [("a", "{}"), ("b", '{"n": [1, 2]}')]),
    ("llama3_json", "Paris is the capital of France. {not a call}",
     "Paris is the capital of France. {not a call}", []),
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                '{"name": "get_time", "arguments": {}}]', "",
     [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]),
    ("mistral", 'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "Sure.",
     [("get_weather", '{"city": "Paris"}')]),
    ("mistral", "[TOOL_ CALLS] is not a marker", "[TOOL_ CALLS] is not a marker", []),
]


def run(parser, chunks):
    out = []
    for c in chunks:
        out += parser.feed(c)
    return merged(out + parser.finish())


def summary(deltas):
    content = "".join(d.text for d in deltas if isinstance(d, Content))
    calls = {}
    for d in deltas:
        if isinstance(d, CallStart):
            calls[d.index] = [d.name, ""]
        elif isinstance(d, CallArgs):
            calls[d.index][1] += d.text
    return content, [tuple(calls[i]) for i in sorted(calls)]


def splits(text):
    yield [text]
    yield list(text)
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]


@pytest.mark.parametrize("family,text,content,calls", RECORDED,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(RECORDED)])
def test_recorded_text_at_every_split(family, text, content, calls):
    for chunks in splits(text):
        assert summary(run(PARSERS[family](), chunks)) == (content, calls), chunks


def test_call_ids_and_first_deltas():
    deltas = run(PARSERS["hermes"](), list(RECORDED[1][1]))
    starts = [d for d in deltas if isinstance(d, CallStart)]
    assert [s.index for s in starts] == [0, 1] and len({s.id for s in starts}) == 2
    assert all(s.id.startswith("call_") for s in starts)
    # Each call's start comes before any of its arguments.
    for s in starts:
        first = next(i for i, d in enumerate(deltas) if getattr(d, "index", None) == s.index)
        assert deltas[first] is s
    mistral = [d for d in run(PARSERS["mistral"](), [RECORDED[8][1]])
               if isinstance(d, CallStart)]
    assert all(len(d.id) == 9 and d.id.isalnum() for d in mistral)  # Mistral's templates


def test_marker_prefix_is_held_back_then_released():
    p = PARSERS["hermes"]()
    assert p.feed("Hi <tool") == [Content("Hi")]
    assert merged(p.feed("box>")) == [Content(" <toolbox>")]


def test_detect_from_template():
    assert detect("{{ '<tool_call>' }}") == "hermes"
    assert detect("[TOOL_CALLS]") == "mistral"
    assert detect("<|python_tag|>") == "llama3_json"
    assert detect("{{ messages }}") is None


TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}},
    {"type": "function", "function": {"name": "g"}}]


def test_forced_schemas_accept_calls_and_reject_others():
    required = json.loads(schema_for_required(TOOLS, parallel=True))
    jsonschema.validate([{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {}}],
                        required)
    for bad in ([], [{"name": "h", "parameters": {}}], [{"name": "f", "parameters": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, required)
    single = json.loads(schema_for_required(TOOLS, parallel=False))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "g", "parameters": {}}] * 2, single)
    assert json.loads(schema_for_named(TOOLS[1])) == {"type": "object"}


def test_forced_output_parsers_at_every_split():
    text = '[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {}}]'
    for chunks in splits(text):
        assert summary(run(RequiredParser(), chunks)) == ("", [("f", '{"a": 1}'), ("g", "{}")])
    for chunks in splits('{"a": 1}'):
        assert summary(run(NamedParser("f"), chunks)) == ("", [("f", '{"a": 1}')])


THINK = [
    ("<think>\nThe user asks.\n</think>\n\nParis.", False, "\nThe user asks.\n", "Paris."),
    ("The user asks.\n</think>\n\nParis.", True, "The user asks.\n", "Paris."),
    ("Still thinking <", True, "Still thinking <", ""),
    ("No thinking at all, <think> later is text", False, "",
     "No thinking at all, <think> later is text"),
]


@pytest.mark.parametrize("text,opened,reasoning,content", THINK)
def test_reasoning_split_at_every_split(text, opened, reasoning, content):
    for chunks in splits(text):
        out = run(ThinkParser(opened), chunks)
        assert "".join(d.text for d in out if isinstance(d, Reasoning)) == reasoning
        assert "".join(d.text for d in out if isinstance(d, Content)) == content


def test_reasoning_opened_by_the_prompt():
    assert make_reasoning("qwen3", "<|im_start|>assistant\n<think>\n")._state == "reasoning"
    closed = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert make_reasoning("qwen3", closed)._state == "before"
    assert make_reasoning("deepseek_r1", "")._state == "reasoning"
