"""Token trees, their verification rules, and the tree-shaped strategies (tree, spectr).

- ``TokenTree``: every node's logits under the tree mask equal feeding its root-to-node
  path as a plain chain (float64, both backends), with and without a committed prefix.
- Verifier rules at one node (recursive rejection with and without replacement, one-hot
  candidates, K-SEQ): the chosen token is distributed as p; K-SEQ golden values.
- Strategies: greedy output equals the no-cache oracle for any draft; edge drafters.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import paragen
from paragen.errors import UnsupportedOptionError
from paragen.models.base import Model
from paragen.models.hf import HFModel
from paragen.optimum import optimal_acceptance
from paragen.reference import reference_greedy
from paragen.tree import TokenTree
from paragen.verify import kseq, kseq_rho, recursive_rejection
from tests.helpers import tiny_model, tv, tv_bound

MODEL = tiny_model(31, vocab=30)
TARGET, OTHER = tiny_model(0), tiny_model(1)

nodes = st.lists(st.tuples(st.integers(0, 29), st.integers(0, 40)), min_size=0, max_size=10)


def build(root: int, spec: list[tuple[int, int]]) -> TokenTree:
    """(token, parent choice) pairs -> a tree; repeated (parent, token) pairs merge."""
    tree = TokenTree(root)
    for token, choice in spec:
        tree.add(choice % len(tree), token)
    return tree


def test_token_tree_layout():
    tree = TokenTree(5)
    a, b = tree.add(0, 7), tree.add(0, 8)
    c = tree.add(a, 9)
    assert (a, b, c) == (1, 2, 3)
    assert tree.add(0, 7) == a and tree.cands[0] == [7, 8, 7]  # a repeat is one node, one more candidate
    assert tree.tokens == [5, 7, 8, 9] and tree.parents == [-1, 0, 0, a]
    assert tree.positions(10) == [10, 11, 11, 12]
    assert tree.path(c) == [a, c] and tree.path(0) == []
    assert tree.mask().int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    sub, new = tree.subtree([c, a])
    assert sub.tokens == [5, 7, 9] and new == {0: 0, a: 1, c: 2}
    with pytest.raises(ValueError):
        tree.subtree([c])  # its parent is missing


def check_tree_logits(model: Model, prefix: list[int], tree: TokenTree) -> None:
    """Each node's logits (one tree forward after a cached prefix) equal its path fed as a chain."""
    with torch.inference_mode():
        cache = model.new_cache(max_length=64)
        if prefix:
            model(torch.tensor([prefix]), torch.arange(len(prefix))[None], cache=cache)
            cache.commit(len(prefix))
        n = len(prefix)
        got = model(torch.tensor([tree.tokens]), torch.tensor([tree.positions(n)]), cache=cache, mask=tree.mask()[None])[0]
        for i in range(len(tree)):
            chain = prefix + [tree.tokens[0]] + [tree.tokens[j] for j in tree.path(i)]
            want = model(torch.tensor([chain]), torch.arange(len(chain))[None])[0, -1]
            torch.testing.assert_close(got[i], want, rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(prefix=st.lists(st.integers(0, 29), max_size=8), root=st.integers(0, 29), spec=nodes)
def test_tree_node_logits_equal_chain_native(prefix, root, spec):
    check_tree_logits(MODEL, prefix, build(root, spec))


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, tokenizer):
    from paragen.models.io import save_model

    path = save_model(MODEL, tokenizer, tmp_path_factory.mktemp("hf") / "m", dtype=torch.float64)
    return HFModel.from_dir(path, torch.float64)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prefix=st.lists(st.integers(0, 29), max_size=8), root=st.integers(0, 29), spec=nodes)
def test_tree_node_logits_equal_chain_hf(hf_model, prefix, root, spec):
    check_tree_logits(hf_model, prefix, build(root, spec))


# ---------------------------------------------------------------- rules at one node


def p_(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


P, Q = p_(0.4, 0.3, 0.2, 0.1, 0.0), p_(0.1, 0.2, 0.3, 0.25, 0.15)


def draws(q: torch.Tensor, k: int, replacement: bool, g: torch.Generator) -> list[int]:
    return torch.multinomial(q, k, replacement=replacement, generator=g).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("rule,k,replacement", [
    ("rrs", 1, True), ("rrs", 3, True), ("rrs", 2, False), ("rrs", 4, False), ("top", 2, False),
    ("kseq", 1, True), ("kseq", 2, True), ("kseq", 4, True),
])
def test_node_rule_output_is_distributed_as_p(rule, k, replacement):
    """A correct rule turns any drafts into Y ~ p; a rule that forgot to renormalise q
    without replacement, or used p instead of the residual, fails this."""
    g, n = torch.Generator().manual_seed(k), 20000
    counts: Counter = Counter()
    accepted = 0
    for _ in range(n):
        if rule == "top":  # deterministic candidates: the draft's top-k, one-hot q
            cands, q = Q.topk(k).indices.tolist(), None
        else:
            cands, q = draws(Q, k, replacement, g), Q
        y = kseq(P, cands, Q, g) if rule == "kseq" else recursive_rejection(P, cands, q, replacement, g)
        counts[y] += 1
        accepted += y in cands
    assert tv(counts, {i: float(P[i]) for i in range(5)}, n) < tv_bound(5, n)
    assert 0 < accepted < n  # both the acceptance and the residual paths ran
    if q is not None:  # random drafts: the acceptance lies below the optimal coupling's (paragen.optimum)
        best, slack = optimal_acceptance(P, Q, k, replacement), 4 * math.sqrt(0.25 / n)
        assert accepted / n <= best + slack
        if rule == "kseq":  # and K-SEQ's is within (1 - 1/e) of it (SpecTr, Thm. 2)
            assert accepted / n >= (1 - 1 / math.e) * best - slack


@pytest.mark.slow
def test_recursive_rejection_acceptance_matches_hand_computation():
    """One i.i.d. candidate: acceptance is sum min(p, q) (= 0.1 + 0.2 + 0.2 + 0.1 + 0 = 0.6)."""
    g, n = torch.Generator().manual_seed(0), 20000
    hits = sum(recursive_rejection(P, [c], Q, True, g) == c for c in draws(Q, n, True, g))
    assert abs(hits / n - 0.6) < 4 * math.sqrt(0.24 / n)


@pytest.mark.slow
def test_kseq_golden():
    # p = (.5, .5), q = (1, 0), k = 2: beta = .5/rho, f = (1-(1-beta)^2)/beta = 2 - beta, and
    # f <= rho  <=>  rho^2 - 2 rho + .5 >= 0  <=>  rho >= 1 + 1/sqrt(2). Both drafts are token
    # 0, accepted with total probability 1 - (1 - beta)^2 = .5; the residual is all token 1.
    p, q = p_(0.5, 0.5), p_(1.0, 0.0)
    rho = kseq_rho(p, q, 2)
    assert rho == pytest.approx(1 + 1 / math.sqrt(2), abs=1e-9)
    beta = 0.5 / rho
    assert 1 - (1 - beta) ** 2 == pytest.approx(0.5, abs=1e-9)
    # p = (.6, .4), q = (.5, .5), k = 2: on rho in [1, 1.2], beta = .5 + .4/rho and f = 2 - beta,
    # so f <= rho <=> rho^2 - 1.5 rho + .4 >= 0 <=> rho >= (1.5 + sqrt(.65)) / 2 = 1.153113.
    # Acceptance 1 - (1 - beta)^2 = 1 - .153113^2 = .976556; the residual is all token 0.
    p, q = p_(0.6, 0.4), p_(0.5, 0.5)
    rho = kseq_rho(p, q, 2)
    assert rho == pytest.approx((1.5 + math.sqrt(0.65)) / 2, abs=1e-9)
    g, n = torch.Generator().manual_seed(1), 20000
    hits = sum(kseq(p, c, q, g) in c for c in (draws(q, 2, True, g) for _ in range(n)))
    acc = 1 - (1 - (0.5 + 0.4 / rho)) ** 2
    assert acc == pytest.approx(0.976556, abs=1e-6)
    assert abs(hits / n - acc) < 4 * math.sqrt(acc * (1 - acc) / n) + 1e-3
    # k = 1 or p == q: no division needed
    assert kseq_rho(p, q, 1) == 1.0 and kseq_rho(q, q, 4) == 1.0


# ---------------------------------------------------------------- strategies


class AvoidingDraft(Model):
    """A draft that never proposes the target's greedy token: it gives it probability 0."""

    def __init__(self, target: Model) -> None:
        self.target, self.info, self.tokenizer = target, target.info, None

    def forward(self, tokens, positions, cache=None, mask=None):
        logits = self.target(tokens, positions, cache=cache, mask=mask)
        return logits.scatter(-1, logits.argmax(-1, keepdim=True), float("-inf"))

    def new_cache(self, batch=1, max_length=None):
        return self.target.new_cache(batch, max_length)

    @property
    def dtype(self):
        return self.target.dtype


tree_cases = st.one_of(
    st.builds(lambda b, d, k: ("tree", {"budget": b, "depth": d, "topk": k}),
              st.integers(1, 20), st.integers(1, 6), st.integers(1, 5)),
    st.builds(lambda w: ("tree", {"shape": "static", "widths": ",".join(map(str, w))}),
              st.lists(st.integers(1, 3), min_size=1, max_size=4)),
    st.builds(lambda k, n, v, r: ("spectr", {"k": k, "length": n, "verifier": v, "replacement": r or v == "kseq"}),
              st.integers(1, 5), st.integers(1, 5), st.sampled_from(["kseq", "rrs"]), st.booleans()),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.lists(st.integers(0, 49), min_size=1, max_size=20), n=st.integers(1, 30), case=tree_cases,
       draft_kind=st.sampled_from(["same", "other", "avoiding"]), seed=st.integers(0, 9))
@example(prompt=[0], n=4, case=("tree", {"budget": 1, "depth": 3, "topk": 4}), draft_kind="same", seed=0)  # draft
# cache: a dynamic tree expands more nodes than it keeps
def test_tree_strategies_greedy_equal_oracle(prompt, n, case, draft_kind, seed):
    draft = {"same": TARGET, "other": OTHER, "avoiding": AvoidingDraft(TARGET)}[draft_kind]
    name, options = case
    out = paragen.generate(TARGET, prompt, name, max_new_tokens=n, draft=draft, seed=seed, **options)
    assert out.tokens == reference_greedy(TARGET, prompt, n)
    if draft_kind == "avoiding":
        assert sum(out.stats.extra["accepted"]) == 0  # nothing accepted, yet the output is exact
        assert out.stats.target_calls == len(out.tokens)


def test_draft_equal_to_target_accepts_whole_static_trees():
    out = paragen.generate(TARGET, [1, 2, 3], "tree", max_new_tokens=41, draft=TARGET, shape="static", widths="3,2,1,1")
    assert out.stats.extra["accepted"] == out.stats.extra["proposed"]
    assert out.stats.target_calls == 9  # 8 steps of 4 + 1 tokens, then the last token
    assert out.tokens == reference_greedy(TARGET, [1, 2, 3], 41)


def test_tree_strategies_on_the_hf_backend(model_dir):
    native = paragen.load(model_dir, dtype=torch.float64)
    hf = paragen.load(model_dir, backend="hf", dtype=torch.float64)
    expected = paragen.generate(native, "def add(a, b):", "ar", max_new_tokens=24).tokens
    for name, options in [("tree", {}), ("tree", {"shape": "static"}), ("spectr", {})]:
        assert paragen.generate(hf, "def add(a, b):", name, max_new_tokens=24, draft=hf, **options).tokens == expected


@pytest.mark.parametrize("name,options", [
    ("tree", {"budget": 0}), ("tree", {"depth": 0}), ("tree", {"topk": 0}), ("tree", {"widths": ""}),
    ("tree", {"widths": "2,0"}), ("tree", {"widths": "a,b"}), ("tree", {"shape": "wide"}), ("tree", {"draw": "some"}),
    ("tree", {"draw": "without"}), ("spectr", {"k": 0}), ("spectr", {"length": 0}), ("spectr", {"verifier": "lp"}),
    ("spectr", {"replacement": False}),
])
def test_bad_tree_options_raise(name, options):
    with pytest.raises(UnsupportedOptionError):
        paragen.generate(TARGET, [1, 2], name, max_new_tokens=4, draft=OTHER, **options)


@pytest.mark.slow
@pytest.mark.parametrize("name,options", [
    ("tree", {}),
    ("tree", {"shape": "static", "widths": "3,2"}),
    ("tree", {"shape": "static", "widths": "3,2", "draw": "without"}),
    ("tree", {"shape": "static", "widths": "3,2", "draw": "with"}),
    ("spectr", {"k": 3}),
    ("spectr", {"k": 3, "verifier": "rrs"}),
    ("spectr", {"k": 3, "verifier": "rrs", "replacement": False}),
])
def test_sampled_sequences_follow_the_target_distribution(name, options):
    """Sequences of two tokens (every tree depth and the bonus token take part) against the
    exact distribution under the warped target; see tests/helpers.py for the bound."""
    from tests.helpers import DRAFT, PROMPT, TARGET, exact_sequence_distribution

    params = paragen.sampling.SamplingParams(0.9, top_p=0.95)
    length, n = 2, 4000
    exact = exact_sequence_distribution(TARGET, PROMPT, length, params)
    counts: Counter = Counter()
    accepted = 0
    for i in range(n):
        out = paragen.generate(TARGET, PROMPT, name, max_new_tokens=length, temperature=params.temperature,
                               top_p=params.top_p, seed=i, draft=DRAFT, **options)
        counts[tuple(out.tokens)] += 1
        accepted += sum(out.stats.extra["accepted"])
    assert tv(counts, exact, n) < tv_bound(len(exact), n)
    assert 0 < accepted < n  # drafts were both accepted and rejected
