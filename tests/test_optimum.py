"""The optimal multi-draft acceptance (LP, subset formula) and SpecTr's K-SEQ, on small and large vocabularies."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from paragen.errors import InvalidInputError
from paragen.optimum import (
    _miss_without_replacement,
    draft_tuples,
    kseq_acceptance,
    optimal_acceptance,
    optimal_acceptance_lp,
)
from paragen.verify import kseq_residual, kseq_rho


def t_(*v):
    return torch.tensor(v, dtype=torch.float64)


def random_pair(rng, v, zeros=True):
    """p, q from a Dirichlet of random concentration; sometimes with zero entries (top-p/top-k warped rows)."""
    a = rng.choice([0.05, 0.3, 1.0, 3.0])
    p, q = rng.dirichlet([a] * v), rng.dirichlet([a] * v)
    for x in (p, q):
        if zeros and rng.random() < 0.3:
            x[rng.choice(np.flatnonzero(np.arange(v) != x.argmax()))] = 0.0  # never the mode: keep a distribution
    return p / p.sum(), q / q.sum()


def brute_force(p, q, k, replacement):
    """min over all 2^V token subsets S of p(S) + P(some draft outside S), from the enumerated draft tuples."""
    p = torch.as_tensor(p, dtype=torch.float64)
    tuples, probs = draft_tuples(q, k, replacement)
    best = math.inf
    for r in range(p.numel() + 1):
        for s in itertools.combinations(range(p.numel()), r):
            inside = torch.zeros(p.numel(), dtype=torch.bool)
            inside[list(s)] = True
            best = min(best, float(p[inside].sum() + probs[~inside[tuples].all(1)].sum()))
    return best


def test_draft_tuples_golden():
    q = t_(0.5, 0.3, 0.2)
    tuples, probs = draft_tuples(q, 2, replacement=True)
    assert tuples.shape == (9, 2) and torch.allclose(probs, q[tuples[:, 0]] * q[tuples[:, 1]])
    tuples, probs = draft_tuples(q, 2, replacement=False)
    got = dict(zip(map(tuple, tuples.tolist()), probs.tolist()))
    # P(0, 1) = 0.5 * 0.3 / (1 - 0.5) = 0.3;  P(1, 0) = 0.3 * 0.5 / (1 - 0.3) = 0.15 / 0.7;  P(2, 1) = 0.2 * 0.3 / 0.8
    assert len(got) == 6 and got[(0, 1)] == pytest.approx(0.3) and got[(1, 0)] == pytest.approx(0.15 / 0.7)
    assert got[(2, 1)] == pytest.approx(0.075) and float(probs.sum()) == pytest.approx(1.0, abs=1e-15)
    # without replacement k is capped at the support of q: token 2 is never drafted, so both others always are
    tuples, probs = draft_tuples(t_(0.6, 0.4, 0.0), 3, replacement=False)
    assert sorted(map(tuple, tuples.tolist())) == [(0, 1), (1, 0)] and float(probs.sum()) == pytest.approx(1.0)


def test_lp_equals_fast_formula_equals_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(120):
        v, k, replacement = int(rng.integers(2, 6)), int(rng.integers(1, 4)), bool(rng.integers(2))
        p, q = random_pair(rng, v)
        brute = brute_force(p, q, k, replacement)
        assert optimal_acceptance_lp(p, q, k, replacement) == pytest.approx(brute, abs=1e-9), (p, q, k, replacement)
        assert optimal_acceptance(p, q, k, replacement) == pytest.approx(brute, abs=1e-9), (p, q, k, replacement)


def test_fast_formula_without_replacement_k4_and_peaked_drafts():
    """The quadrature path (k >= 3 without replacement) against brute force, including drafts with one dominant token."""
    rng = np.random.default_rng(1)
    for _ in range(25):
        v = int(rng.integers(4, 7))
        p, q = random_pair(rng, v, zeros=False)
        for k in (3, 4):
            assert optimal_acceptance(p, q, k, False) == pytest.approx(brute_force(p, q, k, False), abs=1e-9)
    q = np.array([1 - 1e-5 - 2e-6, 1e-5, 1e-6, 1e-6])  # q mass outside the top 2 tokens: r = 2e-6
    p = np.array([0.1, 0.2, 0.3, 0.4])
    assert optimal_acceptance(p, q, 3, False) == pytest.approx(brute_force(p, q, 3, False), abs=1e-9)
    # r = 5e-24 outside the top 3: a closed form in e^{q t} gave nan here (t reaches 1e25)
    q = np.array([1 - 2.1e-8, 5.3e-24, 9.3e-27, 8.9e-9, 1.2e-8])
    p = np.array([1e-13, 1.6e-7, 0.79, 2.1e-3, 0.0])
    p[4] = 1 - p.sum()
    for k in (3, 4):
        assert optimal_acceptance(p, q, k, False) == pytest.approx(brute_force(p, q, k, False), abs=1e-9)


def test_quadrature_matches_closed_form_at_vocabulary_4096():
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 8.0):
        q = torch.softmax(torch.randn(4096, generator=g, dtype=torch.float64) * scale, 0)
        q_out = torch.cat([q.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)])
        # k = 2 without replacement: P(some draft outside S) = q_out (1 + sum_{x in S} q(x) / (1 - q(x)))
        closed = q_out * (1 + torch.cat([torch.zeros(1, dtype=torch.float64), (q / (1 - q)).cumsum(0)]))
        assert torch.allclose(_miss_without_replacement(q, q_out, 2), closed, rtol=0, atol=1e-12)


def test_k1_is_one_minus_total_variation():
    rng = np.random.default_rng(2)
    for _ in range(40):
        p, q = random_pair(rng, int(rng.integers(2, 50)))
        tv_gap = np.minimum(p, q).sum()  # 1 - TV(p, q)
        for replacement in (True, False):
            assert optimal_acceptance(p, q, 1, replacement) == pytest.approx(tv_gap, abs=1e-12)
            assert kseq_acceptance(p, q, 1) == pytest.approx(tv_gap, abs=1e-12)
    p, q = random_pair(rng, 5)
    assert optimal_acceptance_lp(p, q, 1) == pytest.approx(np.minimum(p, q).sum(), abs=1e-9)


def test_optimum_bounds_monotone_in_k_and_without_replacement_dominates():
    rng = np.random.default_rng(3)
    for _ in range(40):
        p, q = random_pair(rng, int(rng.integers(2, 60)))
        one = np.minimum(p, q).sum()
        for replacement in (True, False):
            alphas = [optimal_acceptance(p, q, k, replacement) for k in range(1, 6)]
            assert one - 1e-12 <= alphas[0] and alphas[-1] <= 1.0
            assert all(a <= b + 1e-12 for a, b in zip(alphas, alphas[1:])), alphas
        # P(all k draws in S) is smaller without replacement (each draw leaves less of S), so its optimum is larger
        for k in range(2, 5):
            assert optimal_acceptance(p, q, k, False) >= optimal_acceptance(p, q, k, True) - 1e-12


def test_edge_cases_equal_and_disjoint():
    p = t_(0.1, 0.2, 0.3, 0.4)
    for replacement in (True, False):
        assert optimal_acceptance(p, p, 3, replacement) == pytest.approx(1.0, abs=1e-12)
        assert optimal_acceptance_lp(p, p, 2, replacement) == pytest.approx(1.0, abs=1e-9)
        assert optimal_acceptance(t_(0.5, 0.5, 0, 0), t_(0, 0, 0.3, 0.7), 3, replacement) == 0.0
        assert optimal_acceptance_lp(t_(0.5, 0.5, 0, 0), t_(0, 0, 0.3, 0.7), 2, replacement) == pytest.approx(0.0, abs=1e-9)
    assert kseq_acceptance(p, p, 3) == pytest.approx(1.0) and kseq_rho(p, p, 3) == 1.0
    assert kseq_acceptance(t_(0.5, 0.5, 0, 0), t_(0, 0, 0.3, 0.7), 3) == 0.0
    assert torch.allclose(kseq_residual(t_(0.5, 0.5, 0, 0), t_(0, 0, 0.3, 0.7), 3), t_(0.5, 0.5, 0, 0))


def test_kseq_golden_two_tokens():
    # p = (11/16, 5/16), q = (1/2, 1/2), k = 2. For rho in [1, 11/8]: token 0 has q < p/rho and token 1 has
    # q > p/rho, so beta(rho) = 1/2 + (5/16)/rho. Feasible iff rho beta >= 1 - (1 - beta)^2 = 2 beta - beta^2,
    # i.e. rho >= 2 - beta = 3/2 - (5/16)/rho, i.e. rho^2 - 1.5 rho + 5/16 >= 0: roots 1/4 and 5/4, so rho* = 5/4.
    # beta = 1/2 + 1/4 = 3/4; acceptance 1 - (1/4)^2 = 15/16; scale (15/16) / (3/4) = 5/4;
    # residual (11/16 - (1/2)(5/4), 5/16 - (1/4)(5/4)) = (1/16, 0) -> normalised (1, 0).
    # Optimum: S = {} -> 1, S = {1} -> 5/16 + 1 - 1/4, S = {0} -> 11/16 + 3/4, S = {0, 1} -> 1: alpha* = 1.
    p, q = t_(11 / 16, 5 / 16), t_(0.5, 0.5)
    assert kseq_rho(p, q, 2) == pytest.approx(1.25, abs=1e-12)
    assert kseq_acceptance(p, q, 2) == pytest.approx(15 / 16, abs=1e-12)
    assert torch.allclose(kseq_residual(p, q, 2), t_(1.0, 0.0), atol=1e-9)
    for replacement in (True, False):
        assert optimal_acceptance(p, q, 2, replacement) == pytest.approx(1.0, abs=1e-12)
        assert optimal_acceptance_lp(p, q, 2, replacement) == pytest.approx(1.0, abs=1e-9)


def test_kseq_golden_flat_beta_and_k1():
    # p = (1, 0), q = (1/2, 1/2), k = 2: beta(rho) = min(1/2, 1/rho) = 1/2 on [1, 2]; rho/2 >= 1 - 1/4 -> rho* = 3/2.
    # Acceptance 3/4 = P(token 0 among the drafts) = the optimum (S = {1}: 0 + 1 - (1/2)^2); residual (1, 0).
    p, q = t_(1.0, 0.0), t_(0.5, 0.5)
    assert kseq_rho(p, q, 2) == pytest.approx(1.5, abs=1e-12)
    assert kseq_acceptance(p, q, 2) == pytest.approx(0.75, abs=1e-12) == optimal_acceptance(p, q, 2)
    assert torch.allclose(kseq_residual(p, q, 2), t_(1.0, 0.0))
    # k = 1 is speculative sampling: rho = 1, beta = sum min(p, q) = 0.2 + 0.2 + 0.1, residual norm(max(p - q, 0)) = (1, 0, 0)
    p, q = t_(0.7, 0.2, 0.1), t_(0.2, 0.3, 0.5)
    assert kseq_rho(p, q, 1) == 1.0 and kseq_acceptance(p, q, 1) == pytest.approx(0.5)
    assert torch.allclose(kseq_residual(p, q, 1), t_(1.0, 0.0, 0.0))


def test_kseq_rho_is_the_smallest_rho_with_a_nonnegative_residual():
    rng = np.random.default_rng(4)
    for _ in range(60):
        p, q = random_pair(rng, int(rng.integers(2, 30)))
        p, q, k = torch.tensor(p), torch.tensor(q), int(rng.integers(2, 6))

        def unnormalised_residual(rho, p=p, q=q, k=k):
            m = torch.minimum(q, p / rho)
            beta = m.sum()
            return p - m * (1 - (1 - beta) ** k) / beta

        rho = kseq_rho(p, q, k)
        assert 1.0 <= rho <= k and unnormalised_residual(rho).min() >= -1e-12
        if rho > 1.0:
            assert unnormalised_residual(rho - 1e-6).min() < 0


def kseq_enumerated(p, q, k, rho):
    """K-SEQ by the paper's rule over every i.i.d. draft tuple: (marginal of Y, P(Y in drafts))."""
    tuples, probs = draft_tuples(q, k, replacement=True)
    accept = torch.clamp(p / (rho * q), max=1.0).nan_to_num(0.0)
    residual = kseq_residual(p, q, k, rho)
    out, hit = torch.zeros_like(p), 0.0
    for tup, pt in zip(tuples.tolist(), probs.tolist()):
        y = torch.zeros_like(p)
        left = 1.0  # probability that every earlier draft was rejected
        for x in tup:
            y[x] += left * accept[x]
            left *= 1 - accept[x]
        y += left * residual
        out += pt * y
        hit += pt * float(y[list(set(tup))].sum())
    return out, hit


def test_kseq_is_lossless_and_its_acceptance_is_exact():
    rng = np.random.default_rng(5)
    for _ in range(30):
        v, k = int(rng.integers(2, 5)), int(rng.integers(1, 4))
        p, q = (torch.tensor(x) for x in random_pair(rng, v))
        rho_star = kseq_rho(p, q, k)
        for rho in (rho_star, (rho_star + k) / 2, float(k)):  # any feasible rho is lossless; rho* accepts most
            out, hit = kseq_enumerated(p, q, k, rho)
            assert torch.allclose(out, p, atol=1e-9), (p, q, k, rho)
            assert kseq_acceptance(p, q, k, rho) == pytest.approx(hit, abs=1e-9)
        # at rho* the residual never lands on a rejected draft: P(Y in drafts) = 1 - (1 - beta)^k exactly.
        # (At a larger rho it can, so rho* maximises the draft-accept probability, not always P(Y in drafts).)
        beta = float(torch.minimum(q, p / kseq_rho(p, q, k)).sum())
        assert kseq_acceptance(p, q, k) == pytest.approx(1 - (1 - beta) ** k, abs=1e-9)


def test_kseq_is_within_one_minus_one_over_e_of_the_optimum():
    """SpecTr (abstract and Sec. 4): K-SEQ's acceptance is (1 - 1/e)-optimal for i.i.d. drafts."""
    rng = np.random.default_rng(6)
    for i in range(80):
        small = i < 30
        p, q = random_pair(rng, int(rng.integers(2, 5)) if small else int(rng.integers(5, 200)))
        k = int(rng.integers(1, 4)) if small else int(rng.integers(1, 9))
        best = optimal_acceptance_lp(p, q, k) if small else optimal_acceptance(p, q, k)
        assert (1 - 1 / math.e) * best - 1e-9 <= kseq_acceptance(p, q, k) <= best + 1e-9


def test_vocabulary_4096():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4096, generator=g, dtype=torch.float64) * 3
    q = torch.softmax(logits, 0)
    p = torch.softmax(logits + torch.randn(4096, generator=g, dtype=torch.float64), 0)
    iid = [optimal_acceptance(p, q, k) for k in (1, 2, 4)]
    wor = [optimal_acceptance(p, q, k, replacement=False) for k in (1, 2, 4)]
    assert iid[0] == pytest.approx(float(torch.minimum(p, q).sum()), abs=1e-12)
    assert iid == sorted(iid) and wor == sorted(wor) and all(w >= i - 1e-12 for w, i in zip(wor, iid))
    assert (1 - 1 / math.e) * iid[2] <= kseq_acceptance(p, q, 4) <= iid[2]


def test_bad_input():
    p = t_(0.5, 0.5)
    with pytest.raises(InvalidInputError, match="k"):
        optimal_acceptance(p, p, 0)
    with pytest.raises(InvalidInputError, match="vocabulary"):
        optimal_acceptance(p, t_(0.2, 0.3, 0.5), 2)
    with pytest.raises(InvalidInputError, match="probability vector"):
        kseq_acceptance(t_(1.5, -0.5), p, 2)
    with pytest.raises(InvalidInputError, match="probability vector"):
        optimal_acceptance(t_(0.5, 0.4), p, 2)
    with pytest.raises(InvalidInputError, match="max_tuples"):
        draft_tuples(torch.full((100,), 0.01, dtype=torch.float64), 3)
