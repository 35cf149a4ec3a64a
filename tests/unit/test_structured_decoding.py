"""Grammar-constrained decoding and the new logits processors, on CPU: the matcher and its
mask, batches mixing grammars and free rows (overlapped loop on and off), a migrated stream
replaying its tokens, and the processors against HF transformers' semantics."""

import json

import jsonschema
import pytest
import torch

from common.grammar import GrammarError
from common.sampling_params import SamplingParams
from common.structured_output import StructuredOutput
from engine import LLM
from engine.runner.logits_processors import process_logits
from engine.runner.sampler import SamplingRow
from engine.structured.bitmask import apply_bitmask, fill_bitmask
from engine.structured.matcher import GrammarCompiler
from tests.structured_schemas import SCHEMAS

ASK = [{"role": "user", "content": "Reply with a JSON value."}]


@pytest.fixture(scope="module")
def llm(demo_model_dir):
    with LLM(str(demo_model_dir), device="cpu") as engine:
        yield engine


def schema_params(schema, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=120,
                          structured=StructuredOutput("json_schema", json.dumps(schema)), **kw)


def test_mask_allows_only_grammar_tokens_and_eos_only_when_complete(llm):
    tok = llm.tokenizer
    eos = llm.engine.eos_token_ids
    grammars = GrammarCompiler(tok, llm.engine.model_config.vocab_size, eos)
    m = grammars.matcher(StructuredOutput("regex", "(yes|no)"))
    vocab = llm.engine.model_config.vocab_size
    logits = torch.zeros(2, vocab)
    apply_bitmask(logits, fill_bitmask([m, None], vocab, eos))
    allowed = {t for t in range(vocab) if logits[0, t] == 0}
    texts = {tok.decode([t]) for t in allowed}
    assert texts and all(t and ("yes".startswith(t) or "no".startswith(t)) for t in texts)
    assert not allowed & set(eos)  # the grammar is not complete: no EOS yet
    assert (logits[1] == 0).all()  # a free row is untouched
    m.catch_up(tok.encode("yes"))
    logits = torch.zeros(1, vocab)
    apply_bitmask(logits, fill_bitmask([m], vocab, eos))
    assert {t for t in range(vocab) if logits[0, t] == 0} <= set(eos)


def test_rejected_grammar_is_a_value_error_before_anything_is_queued(llm):
    params = SamplingParams(structured=StructuredOutput("json_schema", '{"not": {}}'))
    with pytest.raises(GrammarError, match="Unimplemented keys"):
        llm.engine.add_request([1, 2, 3], params)
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlapped"])
def test_batch_of_different_grammars_and_free_rows(demo_model_dir, overlap):
    with LLM(str(demo_model_dir), device="cpu", async_scheduling=overlap) as engine:
        prompt = engine.tokenizer.encode_chat(ASK)
        schemas = SCHEMAS[:6]
        free = SamplingParams(temperature=0, max_tokens=24)
        params = [schema_params(s) for s in schemas] + [free]
        outs = engine.generate([prompt] * len(params), params)
        alone = engine.generate([prompt], [free])[0]
        steps = engine.engine.overlap.num_steps if overlap else 0
    for schema, out in zip(schemas, outs, strict=False):
        jsonschema.validate(json.loads(out.text), schema)
    assert outs[-1].text == alone.text  # the free row is not constrained by its neighbours
    assert not overlap or steps > 0  # the overlapped loop ran the constrained batch


def test_migrated_stream_replays_its_tokens(llm):
    prompt = llm.tokenizer.encode_chat(ASK)
    params = schema_params(SCHEMAS[10])
    whole = llm.generate([prompt], [params])[0]
    k = 5
    engine = llm.engine
    rid = engine.add_request(prompt + whole.token_ids[:k], params, num_generated_tokens=k)
    rest = []
    while engine.has_unfinished():
        for d in engine.step():
            if d.request_id == rid:
                rest.extend(d.new_token_ids)
    assert whole.token_ids[:k] + rest == whole.token_ids
    # Without the replay the grammar would start over: the continuation would differ.
    rid = engine.add_request(prompt + whole.token_ids[:k], params)
    fresh = []
    while engine.has_unfinished():
        for d in engine.step():
            if d.request_id == rid:
                fresh.extend(d.new_token_ids)
    assert whole.token_ids[:k] + fresh != whole.token_ids


def row(params, out=(), prompt=(), eos=(2,)):
    return SamplingRow(params, list(out), None, prompt_token_ids=list(prompt), eos_token_ids=eos)


def test_logit_bias_and_min_tokens():
    logits = torch.zeros(2, 10)
    rows = [row(SamplingParams(logit_bias={3: 5.0, 12: 1.0})),
            row(SamplingParams(min_tokens=2, stop_token_ids=(7,)), out=[1])]
    out = process_logits(logits, rows)
    assert out[0, 3] == 5.0 and out[0].sum() == 5.0
    assert out[1, 2] == out[1, 7] == float("-inf") and (out[1, :2] == 0).all()
    assert (logits == 0).all()  # the caller's logits (a graph's buffer) are left alone
    reached = process_logits(logits, [row(SamplingParams(min_tokens=1), out=[4])])
    assert (reached == 0).all()


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    logits = torch.randn(1, 50)
    prompt, out = [3, 4, 4, 9], [9, 11]
    ours = process_logits(logits, [row(SamplingParams(repetition_penalty=1.3), out, prompt)])
    hf = transformers.RepetitionPenaltyLogitsProcessor(1.3)(
        torch.tensor([prompt + out]), logits.clone())
    torch.testing.assert_close(ours, hf)
