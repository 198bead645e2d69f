"""Every lossless strategy equals the no-cache greedy oracle, token for token (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import paragen
from paragen.reference import reference_greedy
from paragen.strategies import STRATEGIES
from tests.helpers import EOS_MODEL, MODELS, NO_DRAFTS, AdversarialDraft, stats_case, tiny_model

GREEDY_CASES = [
    ("ar", {}),
    ("lookup", {}),
    ("lookup", {"max_ngram": 1, "max_draft": 2}),
    ("lookup", {"max_ngram": 5, "min_ngram": 2, "max_draft": 20}),
    ("jacobi", {}),
    ("jacobi", {"window": 1}),
    ("jacobi", {"window": 16}),
    ("lookahead", {}),
    ("lookahead", {"window": 2, "ngram": 2, "guesses": 1}),
    ("lookahead", {"window": 7, "ngram": 5, "guesses": 8, "pool_from_prompt": False}),
]


prompts = st.lists(st.integers(0, 49), min_size=1, max_size=24)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(MODELS)), prompt=prompts, n=st.integers(1, 40), case=st.sampled_from(GREEDY_CASES))
def test_greedy_strategies_equal_oracle(seed, prompt, n, case):
    model = MODELS[seed]
    name, options = case
    expected = reference_greedy(model, prompt, n)
    out = paragen.generate(model, prompt, name, max_new_tokens=n, **options)
    assert out.tokens == expected
    assert out.stats.new_tokens == len(expected)
    assert sum(k * v for k, v in out.stats.committed_per_call.items()) >= len(expected)


@settings(max_examples=20, deadline=None)
@given(prompt=prompts, n=st.integers(1, 40), k=st.integers(1, 8), adaptive=st.booleans(),
       draft_kind=st.sampled_from(["same", "other", "adversarial"]))
def test_speculative_greedy_equals_oracle(prompt, n, k, adaptive, draft_kind):
    target = MODELS[0]
    draft = {"same": target, "other": MODELS[1], "adversarial": AdversarialDraft(target)}[draft_kind]
    expected = reference_greedy(target, prompt, n)
    out = paragen.generate(target, prompt, "speculative", max_new_tokens=n, draft=draft, k=k, adaptive=adaptive)
    assert out.tokens == expected
    acc = out.stats.extra["accepted"]
    if draft_kind == "adversarial":
        assert sum(acc) == 0  # nothing accepted, yet the output is exact
        assert out.stats.target_calls == len(expected)


def test_identical_draft_accepts_everything():
    target = MODELS[0]
    out = paragen.generate(target, [1, 2, 3], "speculative", max_new_tokens=31, draft=target, k=5)
    # 31 tokens = 5 full chains of 5 drafts + 1 bonus, then one last token
    assert out.stats.extra["accepted"] == out.stats.extra["proposed"]
    assert out.stats.target_calls == 6
    assert out.tokens == reference_greedy(target, [1, 2, 3], 31)


@settings(max_examples=20, deadline=None)
@given(prompt=st.lists(st.integers(0, 11), min_size=1, max_size=10), n=st.integers(1, 30),
       case=st.sampled_from(GREEDY_CASES + [("speculative", {"k": 3})]))
@example(prompt=[0, 3, 0, 0, 3, 0], n=10, case=("lookahead", {}))  # EOS right after the budget: still "length"
def test_eos_is_handled_like_ar(prompt, n, case):
    name, options = case
    draft = tiny_model(8, vocab=12, eos=3) if name == "speculative" else None
    expected = reference_greedy(EOS_MODEL, prompt, n)
    out = paragen.generate(EOS_MODEL, prompt, name, max_new_tokens=n, draft=draft, **options)
    assert out.tokens == expected
    assert 3 not in out.tokens
    assert out.stats.finish_reason == ("eos" if len(expected) < n else "length")


def test_stop_strings_are_handled_like_ar(model_dir):
    model = paragen.load(model_dir)
    ar = paragen.generate(model, "def add(a, b):", "ar", max_new_tokens=40)
    assert len(ar.text) > 4, "fixture model must produce some text"
    stop = ar.text[2:4]  # a string the output is known to contain
    base = paragen.generate(model, "def add(a, b):", "ar", max_new_tokens=40, stop=stop)
    assert base.stats.finish_reason == "stop"
    assert stop not in base.text and ar.text.startswith(base.text)
    for name in ["lookup", "jacobi", "lookahead", "speculative"]:
        draft = model if name == "speculative" else None
        out = paragen.generate(model, "def add(a, b):", name, max_new_tokens=40, stop=stop, draft=draft)
        assert (out.tokens, out.text, out.stats.finish_reason) == (base.tokens, base.text, "stop")


def test_stream_pieces_join_to_text(model_dir):
    model = paragen.load(model_dir)
    for name in ["ar", "lookahead"]:
        pieces = list(paragen.stream(model, "class Point:", name, max_new_tokens=30))
        assert "".join(pieces) == paragen.generate(model, "class Point:", name, max_new_tokens=30).text


def test_hf_backend_strategies_equal_native(model_dir):
    native = paragen.load(model_dir, dtype=torch.float64)
    hf = paragen.load(model_dir, backend="hf", dtype=torch.float64)
    for name in ["ar", "lookup", "jacobi", "lookahead"]:
        a = paragen.generate(native, "def add(a, b):", name, max_new_tokens=24)
        b = paragen.generate(hf, "def add(a, b):", name, max_new_tokens=24)
        assert a.tokens == b.tokens, name
    b = paragen.generate(hf, "def add(a, b):", "speculative", max_new_tokens=24, draft=hf)
    assert b.tokens == paragen.generate(native, "def add(a, b):", "ar", max_new_tokens=24).tokens


@pytest.mark.slow
def test_builtin_models_every_lossless_strategy_equals_oracle():
    """The shipped models (float64), two HumanEval prompts: the oracle holds on a real model too."""
    from paragen.tasks import humaneval

    target = paragen.load("code-target", dtype=torch.float64)
    draft = paragen.load("code-draft", dtype=torch.float64)
    for task in humaneval()[:2]:
        ids = target.tokenizer.encode(task.prompt)
        expected = reference_greedy(target, ids, 32)
        drafted = [("speculative", {"draft": draft}), ("tree", {"draft": draft}), ("spectr", {"draft": draft}),
                   ("tree", {"draft": draft, "shape": "static", "widths": "3,2,1"})]
        for name, options in GREEDY_CASES + drafted:
            out = paragen.generate(target, ids, name, max_new_tokens=32, **options)
            assert out.tokens == expected, (task.id, name, options)


# ---------------------------------------------------------------- statistics: every strategy, one invariant

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(STRATEGIES)), prompt=prompts, n=st.integers(1, 30),
       seed=st.integers(0, 3), sampled=st.booleans())
@example(name="lookup", prompt=[1, 2, 3, 1, 2, 3, 1, 2], n=20, seed=0, sampled=False)
@example(name="lookahead", prompt=[1, 2, 3, 1, 2, 3, 1, 2], n=3, seed=0, sampled=False)
@example(name="jacobi", prompt=[5], n=12, seed=0, sampled=False)
@example(name="diffusion", prompt=[5, 6], n=8, seed=0, sampled=False)
def test_every_strategy_counts_its_drafts_and_commits(name, prompt, n, seed, sampled):
    """proposed >= accepted >= 0 at every draft position, every accepted draft token committed,
    new_tokens == the committed tokens of the histogram, and lossy exactly when the strategy is."""
    from paragen import labels

    cls = STRATEGIES[name]
    model, kw = stats_case(name, seed)
    temperature = 1.0 if sampled and cls.supports_sampling else 0.0
    s = paragen.generate(model, prompt, name, max_new_tokens=n, temperature=temperature, seed=seed, **kw).stats
    assert s.new_tokens == sum(k * v for k, v in s.committed_per_call.items())
    assert labels.lossy(s.extra) == (not cls.lossless)
    if name in NO_DRAFTS:
        assert labels.draft_totals(s.extra) is None
        return
    proposed, accepted = s.extra["proposed"], s.extra["accepted"]
    assert len(proposed) == len(accepted)
    assert all(p >= a >= 0 for p, a in zip(proposed, accepted))
    assert all(0 <= a / p <= 1 for p, a in zip(proposed, accepted) if p)
    assert all(x >= y for x, y in zip(accepted, accepted[1:]))  # an accepted prefix: position d needs d - 1
    steps = sum(s.committed_per_call.values())
    assert sum(accepted) == s.new_tokens - steps  # each step commits its accepted drafts and one token of its own
    assert s.extra["nodes"] >= sum(proposed)  # every proposed position holds at least one verified token
