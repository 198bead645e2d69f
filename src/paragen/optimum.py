"""The optimal multi-draft acceptance at one position: the ceiling that tree and SpecTr verifiers are measured against.

Setting: target p [V], draft q [V]; k drafts X_1..X_k from q, i.i.d. (``replacement=True``) or without
replacement (each from q renormalised over the tokens not drawn yet; k is capped at the size of q's
support, past which there is nothing left to draw). A verifier outputs Y ~ p exactly; its acceptance is
P(Y in {X_1..X_k}). The best over all verifiers is the optimal-transport problem with membership cost
of Sun et al. 2023 ("SpecTr: Fast Speculative Decoding via Optimal Transport", arXiv 2310.15141), an LP
exponential in k (their words); Hu et al. 2025 ("Towards Optimal Multi-draft Speculative Decoding", arXiv
2502.18779) take its dual, a subset selection, and solve it efficiently for both draft laws:

    alpha*(p, q, k) = max over couplings pi of (drafts, Y) with marginals (Q_k, p) of P_pi(Y in drafts).

The dual is derived here (not copied) as max-flow/min-cut on the graph source -> tuple t (capacity Q_k(t))
-> each token of t (capacity inf) -> token y (capacity p(y)) -> sink:

    alpha* = min over S subset of [V] of  p(S) + P(some draft lies outside S).           (*)

A cut pays p(S) for the token edges it cuts, and every tuple with a token outside S (its infinite edge
into that token would otherwise cross the cut). An accepted flow is completed to a full coupling by
pairing the unaccepted masses arbitrarily, so max-flow = alpha*. Without replacement each draw stays in S
with (q(S) - q(drawn)) / (1 - q(drawn)) <= q(S), so P(all drafts in S) <= q(S)^k for every S, and by (*)
the optimum without replacement is never below the i.i.d. one (Hu et al.'s finding, as an inequality).
(The stored copies of both papers available while writing this held their abstracts only: equation
numbers are not cited; the formulas here are derived and checked against the LP and brute force.)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from paragen.errors import InvalidInputError
from paragen.verify import kseq_residual, kseq_rho

MAX_TUPLES = 200_000  # enumeration and the LP are for tiny vocabularies only (tests, worked examples)
Probs = torch.Tensor | np.ndarray | Sequence[float]


def _probs(x: Probs, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64).flatten()
    if t.numel() == 0 or not torch.isfinite(t).all() or (t < 0).any() or abs(float(t.sum()) - 1.0) > 1e-6:
        raise InvalidInputError(f"{name} must be a non-empty probability vector (finite, >= 0, summing to 1)")
    return t / t.sum()


def _pair(p: Probs, q: Probs, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    p, q = _probs(p, "p"), _probs(q, "q")
    if p.numel() != q.numel():
        raise InvalidInputError(f"p and q must share a vocabulary: got {p.numel()} and {q.numel()} entries")
    if not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"k (the number of drafts) must be an integer >= 1, got {k!r}")
    return p, q


def draft_tuples(q: Probs, k: int, replacement: bool = True, max_tuples: int = MAX_TUPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered draft tuple with nonzero probability: (tuples LongTensor [N, k'], probs [N]).

    Only tokens with q > 0 are enumerated; k' = k, or min(k, |support of q|) without replacement.
    Without replacement P(x_1..x_k) = prod_i q(x_i) / (1 - q(x_1) - ... - q(x_{i-1})).
    """
    q = _pair(q, q, k)[1]
    support = torch.nonzero(q > 0).flatten().tolist()
    kk = k if replacement else min(k, len(support))
    n = len(support) ** kk if replacement else math.perm(len(support), kk)
    if n > max_tuples:
        raise InvalidInputError(f"{n} draft tuples exceed max_tuples={max_tuples}: enumerate only tiny vocabularies "
                                "(use optimal_acceptance for large ones)")
    gen = itertools.product(support, repeat=kk) if replacement else itertools.permutations(support, kk)
    tuples = torch.tensor(list(gen), dtype=torch.long).reshape(n, kk)
    qt = q[tuples]
    if replacement:
        return tuples, qt.prod(1)
    # The mass left before each draw, summed over the undrawn tokens (not 1 - drawn: that cancels when q is peaked).
    left, probs = torch.ones(n, q.numel(), dtype=torch.bool), torch.ones(n, dtype=torch.float64)
    for i in range(kk):
        probs = probs * qt[:, i] / (q * left).sum(1)
        left[torch.arange(n), tuples[:, i]] = False
    return tuples, probs


def optimal_acceptance_lp(p: Probs, q: Probs, k: int, replacement: bool = True) -> float:
    """alpha* by solving SpecTr's optimal-transport LP directly: tiny vocabularies only.

    Variables pi(t, y) for every draft tuple t and token y, with sum_y pi(t, y) = Q_k(t) and
    sum_t pi(t, y) = p(y); maximise sum over y in t of pi(t, y). scipy.optimize.linprog (HiGHS).
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    p, q = _pair(p, q, k)
    tuples, probs = draft_tuples(q, k, replacement)
    n, v = tuples.shape[0], p.numel()
    if n * v > MAX_TUPLES:
        raise InvalidInputError(f"the LP would have {n * v} variables (> {MAX_TUPLES}): use optimal_acceptance instead")
    var = np.arange(n * v)
    rows = np.concatenate([var // v, n + var % v])  # row t: mass leaving tuple t; row n + y: mass reaching y
    a_eq = coo_matrix((np.ones(2 * n * v), (rows, np.concatenate([var, var]))), shape=(n + v, n * v))
    member = torch.zeros(n, v, dtype=torch.bool).scatter_(1, tuples, True).flatten().numpy()
    # Both marginals total 1, so one row is redundant; with it, rounding makes HiGHS call tiny cases infeasible.
    # Presolve too declared some cases with 1e-12 masses infeasible; tight tolerances make the LP a 1e-12 reference.
    opts = {"presolve": False, "primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
    b_eq = np.concatenate([probs.numpy(), p.numpy()])[:-1]
    res = linprog(-member.astype(np.float64), A_eq=a_eq.tocsr()[:-1], b_eq=b_eq, bounds=(0, None), method="highs", options=opts)
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return float(-res.fun)


def optimal_acceptance(p: Probs, q: Probs, k: int, replacement: bool = True) -> float:
    """alpha* from the subset form (*), minimised over prefixes of the tokens sorted by p/q: scales to V in the thousands.

    Why prefixes, i.i.d.: the miss term is 1 - q(S)^k, so (*) is concave in the point (q(S), p(S)) and
    its minimum over the zonotope spanned by the vectors (q(x), p(x)) sits at a vertex; the vertices are
    threshold sets of p/q: prefixes of this order, or suffixes, which never beat S = {} (p(S) >= q(S)^k).
    Without replacement P(all drafts in S) is not a function of q(S) alone; that prefixes still suffice is
    Hu et al.'s result (a secondary summary names a "q-convex" structure; the proof was not at hand). Tests
    check both modes against the LP and against all 2^V subsets on random small cases (V <= 6, k <= 4).
    The value is exact, not a bound, to ~1e-14 (rounding; for k >= 3 without replacement, quadrature too).
    Cost: O(V log V) with replacement and for k <= 2; O(V k nodes), ~300-600 nodes, for k >= 3.
    """
    p, q = _pair(p, q, k)
    ratio = torch.where(q > 0, p / q, torch.inf)  # cheap tokens first: little target mass per unit of draft mass
    order = torch.argsort(ratio, stable=True)
    ps, qs = p[order], q[order]
    zero = torch.zeros(1, dtype=torch.float64)
    p_in = torch.cat([zero, ps.cumsum(0)])  # p(S_m) for the prefix S_m of length m = 0..V
    # q mass outside S_m, summed from the tail so that a tiny remainder keeps its relative precision
    q_out = torch.cat([qs.flip(0).cumsum(0).flip(0), zero]).clamp(0.0, 1.0)
    kk = k if replacement else min(k, int((q > 0).sum()))
    if replacement or kk == 1:
        miss = -torch.expm1(kk * torch.log1p(-q_out))  # 1 - (1 - q_out)^k: some i.i.d. draft outside S
    elif kk == 2:  # the integral of _miss_without_replacement in closed form: lam (1 + sum_{x in S} q(x) / (1 - q(x)))
        others = torch.cat([zero, qs.cumsum(0)[:-1]]) + q_out[1:]  # 1 - q(x), summed without q(x) itself
        miss = q_out * (1.0 + torch.cat([zero, (qs / others).cumsum(0)]))
    else:
        miss = _miss_without_replacement(qs, q_out, kk)
    return float((p_in + miss).min().clamp(0.0, 1.0))


def _miss_without_replacement(qs: torch.Tensor, q_out: torch.Tensor, k: int, h: float = 0.2) -> torch.Tensor:
    """P(some of k drafts drawn without replacement lies outside S_m), for every prefix S_m of qs (m = 0..V).

    Exponential race: give token x an Exp(q(x)) clock; the draws without replacement are the tokens in
    the order their clocks ring. The tokens outside S first ring at T ~ Exp(lam), lam = q_out[m], and the
    draws miss S iff fewer than k tokens of S ring before T:

        miss(S) = int_0^inf lam e^{-lam t} P(N_S(t) < k) dt,   N_S(t) ~ Poisson-binomial(1 - e^{-q(x) t} : x in S).

    P(N_S(t) = j), j < k, for every prefix comes from the counting recursion over tokens, in probabilities
    (every term >= 0, every factor e^{-q t} exact: closed forms in e^{q t} lose all precision once t ~ 1/eps).
    The integral is the trapezoid rule in log t, exponentially convergent for this analytic integrand
    (h = 0.2: error ~ e^{-pi^2/h}); the range ends where e^{-r t} is negligible, r = the q mass outside
    the k - 1 likeliest tokens (the slowest decay). Only q's support is looped over (q = 0 tokens sort last).
    """
    n = int((qs > 0).sum())
    r = max(float(qs.sort(descending=True).values[k - 1:].sum()), 1e-300)
    t_hi = (45.0 + math.lgamma(n + 1) - math.lgamma(k) - math.lgamma(n - k + 2)) / r  # e^{-45} / C(n, k-1) left
    t = torch.arange(-40.0, math.log(t_hi) + h, h, dtype=torch.float64).exp()[:, None]  # nodes [T, 1]
    stay, ring = torch.exp(-qs[:n] * t), -torch.expm1(-qs[:n] * t)  # [T, n]
    counts = torch.zeros(t.shape[0], k, dtype=torch.float64)
    counts[:, 0] = 1.0  # P(N = j) for j < k over the empty prefix
    below = [counts.sum(1)]
    for x in range(n):
        counts = counts * stay[:, x:x + 1] + torch.nn.functional.pad(counts[:, :-1] * ring[:, x:x + 1], (1, 0))
        below.append(counts.sum(1))
    below = torch.stack(below + below[-1:] * (qs.numel() - n), 1)  # [T, V + 1]
    return (h * t * q_out * torch.exp(-q_out * t) * below).sum(0)  # dt = t dtau


def _hit(beta: torch.Tensor, k: int) -> torch.Tensor:
    return -torch.expm1(k * torch.log1p(-beta.clamp(max=1.0)))  # 1 - (1 - beta)^k


def kseq_acceptance(p: Probs, q: Probs, k: int, rho: float | None = None) -> float:
    """P(Y in drafts) for K-SEQ with i.i.d. drafts at rho (default kseq_rho): 1 - (1 - beta)^k plus residual hits.

    1 - (1-beta)^k is the probability that some draft is accepted (SpecTr's acceptance). The residual can
    also land on a rejected draft; given that all k were rejected, the drafts are i.i.d. from
    (q - m) / (1 - beta), m = min(q, p/rho), independent of the residual draw, so that adds
    (1-beta)^k * sum_y p_res(y) (1 - (1 - (q(y) - m(y)) / (1 - beta))^k). At rho* this term vanishes
    (p_res = 0 wherever q > p/rho, and q - m = 0 elsewhere), so there the value is 1 - (1 - beta)^k exactly.
    At a larger rho it need not: rho* maximises the draft-accept probability, and P(Y in drafts) can be
    slightly larger at another rho (seen on V = 2, k = 3), though never above optimal_acceptance.
    """
    p, q = _pair(p, q, k)
    rho = kseq_rho(p, q, k) if rho is None else rho
    m = torch.minimum(q, p / rho)
    beta = m.sum()
    hit = _hit(beta, k)
    if beta >= 1.0:
        return float(hit)
    rejected = ((q - m) / (1.0 - beta)).clamp(0.0, 1.0)
    extra = (kseq_residual(p, q, k, rho) * _hit(rejected, k)).sum()
    return float(hit + (1.0 - hit) * extra)
