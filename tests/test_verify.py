"""Golden tests of the acceptance rules on hand-computed distributions."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from paragen.verify import greedy_accept, speculative_accept


def test_greedy_accept_golden():
    assert greedy_accept([5, 6, 7], [5, 6, 7, 8]) == (3, 8)  # all accepted + bonus
    assert greedy_accept([5, 6, 7], [5, 9, 7, 8]) == (1, 9)  # correction at the first mismatch
    assert greedy_accept([5, 6, 7], [4, 6, 7, 8]) == (0, 4)
    assert greedy_accept([], [2]) == (0, 2)


def p_(*v):
    return torch.tensor(v, dtype=torch.float64)


def run(draft, q, p, n=20000):
    g = torch.Generator().manual_seed(0)
    return Counter(speculative_accept(draft, q, p, g) for _ in range(n)), n


@pytest.mark.slow
def test_accept_probability_is_min_one_p_over_q():
    # p = (0.5, 0.5, 0), q = (1, 0, 0), draft 0: accept with 0.5; the residual
    # norm(max(0, p - q)) = (0, 1, 0) always gives token 1; on acceptance the bonus is from p[1].
    q = p_(1.0, 0.0, 0.0)[None]
    p = torch.stack([p_(0.5, 0.5, 0.0), p_(0.0, 0.0, 1.0)])
    counts, n = run([0], q, p)
    assert set(counts) == {(1, 2), (0, 1)}
    assert abs(counts[(1, 2)] / n - 0.5) < 0.02


def test_draft_token_more_likely_under_target_is_always_accepted():
    q = p_(0.2, 0.8)[None]
    p = torch.stack([p_(0.6, 0.4), p_(1.0, 0.0)])
    counts, n = run([0], q, p, n=2000)
    assert counts == Counter({(1, 0): n})


@pytest.mark.slow
def test_committed_token_is_distributed_as_p():
    # One draft position: P(first committed token = x) must equal p(x) whatever q is.
    q = p_(0.6, 0.3, 0.1)
    p0 = p_(0.2, 0.3, 0.5)
    p = torch.stack([p0, p_(1 / 3, 1 / 3, 1 / 3)])
    g = torch.Generator().manual_seed(1)
    n, first = 30000, Counter()
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=g))
        a, nxt = speculative_accept([x], q[None], p, g)
        first[x if a == 1 else nxt] += 1
    for x in range(3):
        assert abs(first[x] / n - float(p0[x])) < 0.015
    # and the acceptance rate is sum_x min(p, q) = 0.2 + 0.3 + 0.1 = 0.6 (Leviathan et al., Thm 3.5)


@pytest.mark.slow
def test_acceptance_rate_is_overlap_of_p_and_q():
    q = p_(0.6, 0.3, 0.1)
    p = torch.stack([p_(0.2, 0.3, 0.5), p_(1.0, 0.0, 0.0)])
    g = torch.Generator().manual_seed(2)
    n = 30000
    acc = 0
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=g))
        acc += speculative_accept([x], q[None], p, g)[0]
    assert abs(acc / n - 0.6) < 0.015


def test_second_position_only_after_first_accepted():
    # q rows: position 0 certain token 0 (p agrees fully), position 1 token 1 (p says never)
    q = torch.stack([p_(1.0, 0.0), p_(0.0, 1.0)])
    p = torch.stack([p_(1.0, 0.0), p_(1.0, 0.0), p_(0.5, 0.5)])
    counts, n = run([0, 1], q, p, n=500)
    assert counts == Counter({(1, 0): n})
