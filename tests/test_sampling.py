"""Sampling: exact warped probabilities, seeded reproducibility, and lossless sampling strategies.

Distribution tests compare the empirical distribution of N sampled sequences with the
exact one. E[TV] <= 0.5 * sqrt(K / N) for K outcomes, and TV moves by at most 1/N per
sample, so (McDiarmid) P(TV > E + t) <= exp(-2 N t^2); t = sqrt(ln(1e6) / (2N)) keeps a
correct sampler's failure rate below one in a million.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import paragen
from paragen.errors import InvalidInputError
from paragen.sampling import SamplingParams, choose, warp
from tests.helpers import DRAFT, PROMPT, TARGET, exact_sequence_distribution, tv, tv_bound


def test_warp_matches_hand_computed_probabilities():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    assert torch.allclose(warp(logits, SamplingParams(1.0)), torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64))
    # temperature 0.5 squares the probabilities before renormalising
    sq = torch.tensor([0.25, 0.0625, 0.0225, 0.01], dtype=torch.float64)
    assert torch.allclose(warp(logits, SamplingParams(0.5)), sq / sq.sum())
    # top-k 2 keeps the two largest
    assert torch.allclose(warp(logits, SamplingParams(1.0, top_k=2)), torch.tensor([2 / 3, 1 / 3, 0, 0], dtype=torch.float64))
    # top-p 0.7: mass above token 2 is 0.75 >= 0.7, so tokens 0 and 1 stay
    assert torch.allclose(warp(logits, SamplingParams(1.0, top_p=0.7)), torch.tensor([2 / 3, 1 / 3, 0, 0], dtype=torch.float64))
    # top-p 0.8: token 2 (mass above 0.75 < 0.8) joins
    expected = torch.tensor([0.5, 0.25, 0.15, 0], dtype=torch.float64) / 0.9
    assert torch.allclose(warp(logits, SamplingParams(1.0, top_p=0.8)), expected)
    assert warp(logits, SamplingParams(0.0)).tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.slow
@pytest.mark.parametrize("params", [SamplingParams(1.0), SamplingParams(0.7, top_k=3), SamplingParams(1.3, top_p=0.8)])
def test_choose_samples_the_warped_distribution(params):
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -2.0])
    p = warp(logits, params)
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = Counter(choose(logits, params, g) for _ in range(n))
    assert tv(counts, {i: float(p[i]) for i in range(5)}, n) < tv_bound(5, n)
    assert all(p[t] > 0 for t in counts)  # nothing outside top-k / top-p is ever drawn


@pytest.mark.parametrize("bad", [dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_k=0),
                                 dict(top_p=0.0), dict(top_p=1.5)])
def test_invalid_sampling_settings_raise(bad):
    with pytest.raises(InvalidInputError):
        SamplingParams(**{"temperature": 1.0, **bad})


@pytest.mark.slow
@pytest.mark.parametrize("strategy,params", [
    ("ar", SamplingParams(1.0)),
    ("speculative", SamplingParams(1.0)),
    ("speculative", SamplingParams(0.8, top_p=0.9)),
    ("lookup", SamplingParams(1.0)),
    ("lookup", SamplingParams(1.2, top_k=3)),
])
def test_sampled_sequences_follow_the_target_distribution(strategy, params):
    length, n = 2, 6000
    exact = exact_sequence_distribution(TARGET, PROMPT, length, params)
    draft = DRAFT if strategy == "speculative" else None
    counts: Counter = Counter()
    for i in range(n):
        out = paragen.generate(TARGET, PROMPT, strategy, max_new_tokens=length, temperature=params.temperature,
                               top_k=params.top_k, top_p=params.top_p, seed=i, draft=draft)
        counts[tuple(out.tokens)] += 1
    assert tv(counts, exact, n) < tv_bound(len(exact), n)


def test_speculative_sampling_rejects_sometimes():
    """The distribution test above must exercise the residual path, not only acceptance."""
    out = [paragen.generate(TARGET, PROMPT, "speculative", max_new_tokens=8, temperature=1.0, seed=s, draft=DRAFT)
           for s in range(20)]
    acc = [sum(o.stats.extra["accepted"]) for o in out]
    prop = [sum(o.stats.extra["proposed"]) for o in out]
    assert 0 < sum(acc) < sum(prop)


def test_seeded_runs_reproduce():
    a = paragen.generate(TARGET, PROMPT, "ar", max_new_tokens=20, temperature=1.0, seed=5)
    b = paragen.generate(TARGET, PROMPT, "ar", max_new_tokens=20, temperature=1.0, seed=5)
    c = [paragen.generate(TARGET, PROMPT, "ar", max_new_tokens=20, temperature=1.0, seed=s).tokens for s in range(6, 10)]
    assert a.tokens == b.tokens
    assert any(t != a.tokens for t in c)
