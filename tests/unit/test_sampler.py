import math

import pytest
import torch

from common.sampling_params import SamplingParams
from engine.runner.sampler import SamplingRow, sample


def rows(params, n=1, outputs=None, gens=None):
    return [SamplingRow(params, (outputs or [[]] * n)[i], (gens or [None] * n)[i])
            for i in range(n)]


def test_greedy_and_top_k_one_agree():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    greedy, _ = sample(logits.clone(), rows(SamplingParams(temperature=0), 4))
    top1, _ = sample(logits.clone(), rows(SamplingParams(temperature=1.0, top_k=1), 4))
    assert greedy == logits.argmax(-1).tolist() == top1


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = torch.zeros(1, 1000)
    draw = lambda seed: [sample(logits.clone(), rows(SamplingParams(seed=seed), 1,
                         gens=[g]))[0][0] for g in [torch.Generator().manual_seed(seed)]
                         for _ in range(20)]
    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    tokens, _ = sample(logits, rows(SamplingParams(temperature=1.0), 4000, gens=[g] * 4000))
    freq = torch.bincount(torch.tensor(tokens), minlength=3).float() / 4000
    assert torch.allclose(freq, probs, atol=0.03), freq


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        t, _ = sample(probs.log(), rows(SamplingParams(top_p=0.75), 1, gens=[g]))
        seen.add(t[0])
    assert seen == {0, 1}


def test_penalties_push_away_repeated_tokens():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    params = SamplingParams(temperature=0, frequency_penalty=0.5)
    tokens, _ = sample(logits.clone(), rows(params, 1, outputs=[[0]]))
    assert tokens == [1]
    params = SamplingParams(temperature=0, presence_penalty=0.05)
    tokens, _ = sample(logits.clone(), rows(params, 1, outputs=[[0, 0, 0]]))
    assert tokens == [0]  # presence counts once: 2.0 - 0.05 > 1.9


def test_logprobs_are_of_the_raw_distribution():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    tokens, lps = sample(logits.clone(), rows(SamplingParams(temperature=0, logprobs=2), 1))
    ref = torch.log_softmax(logits, -1)[0]
    assert tokens == [2]
    assert math.isclose(lps[0].logprob, float(ref[2]), rel_tol=1e-6)
    assert [t for t, _ in lps[0].top] == [2, 1]
    assert math.isclose(sum(math.exp(v) for v in ref.tolist()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(max_tokens=0),
                                 dict(logprobs=21), dict(stop=[""]), dict(top_k=-2)])
def test_invalid_params_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
