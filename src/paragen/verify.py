"""Acceptance rules for draft-and-verify decoding.

Notation: ``k`` drafted tokens ``x[0..k)``; ``p`` target probabilities at the k+1
positions that follow the last committed token (``p[i]`` scores ``x[i]``; ``p[k]`` gives
the bonus token); ``q`` the draft's probabilities for ``x``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from paragen.sampling import SamplingParams, sample, sample_rows, warp


def greedy_accept(draft: list[int], target_argmax: list[int]) -> tuple[int, int]:
    """Accept while the target's argmax equals the draft; return (accept_len, next token).

    ``target_argmax`` has len(draft) + 1 entries; the token after the accepted prefix is
    the target's own choice there (a correction, or the bonus if everything matched).
    """
    a = 0
    while a < len(draft) and draft[a] == target_argmax[a]:
        a += 1
    return a, target_argmax[a]


def speculative_accept(
    draft: list[int], q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None
) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023, Alg. 1; Chen et al. 2023).

    q [k, V], p [k + 1, V], float64. Accept x_i with probability min(1, p_i(x_i) / q_i(x_i));
    at the first rejection sample from norm(max(0, p_i - q_i)); if all k are accepted,
    sample the bonus from p_k. The committed tokens are distributed exactly as p.
    A deterministic draft (lookup) passes one-hot rows of q.
    """
    k = len(draft)
    if k:
        u = torch.rand(k, generator=generator, dtype=torch.float64, device=p.device)
        idx = torch.arange(k, device=p.device)
        x = torch.tensor(draft, device=p.device)
        px, qx = p[idx, x], q[idx, x]
        ok = u * qx < px  # u < p/q without dividing by a possibly tiny q
        a = int(ok.long().cumprod(0).sum())
    else:
        a = 0
    if a == k:
        return k, int(sample(p[k], generator))
    residual = (p[a] - q[a]).clamp_min(0.0)
    total = residual.sum()
    # total == 0 only when p == q, where rejection has probability 0; guard rounding anyway.
    residual = residual / total if total > 0 else p[a]
    return a, int(sample(residual, generator))


def verify_chain(
    draft: list[int], logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None,
    q: torch.Tensor | None = None,
) -> tuple[int, int]:
    """(accept_len, next token) for a chain of drafts scored by one target forward.

    logits [k + 1, V]: the target at the newest committed token and at each draft token.
    Greedy: ``greedy_accept``. Sampling: ``speculative_accept`` with the draft's q [k, V],
    or, for a deterministic draft (``q=None``, e.g. copied from the context), q = one-hot.
    """
    if sampling.greedy:
        return greedy_accept(draft, logits.argmax(-1).tolist())
    p = warp(logits, sampling)
    if q is None:
        q = torch.nn.functional.one_hot(torch.tensor(draft, dtype=torch.long, device=p.device), p.shape[-1]).double()
    return speculative_accept(draft, q, p, generator)


def verify_chains(
    draft: torch.Tensor, lengths: torch.Tensor, logits: torch.Tensor, sampling: SamplingParams,
    generators: Sequence[torch.Generator | None], q: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``verify_chain`` for a batch of chains, on the logits' device: (accept_len [B], next token [B]).

    draft [B, k] (long), of which row b drafted its first ``lengths[b]`` tokens (the rest is
    padding, never accepted); logits [B, k + 1, V]; q [B, k, V] the draft's probabilities
    (None: a deterministic draft, q = one-hot). The same rules as ``greedy_accept`` and
    ``speculative_accept``, row by row: row b accepts a_b <= lengths[b] tokens, then takes the
    target's token after them, a bonus from p[a_b] when a_b == lengths[b], else a sample of
    the residual norm(max(0, p - q)) there. Row b draws with ``generators[b]`` exactly the
    numbers it would alone (``lengths[b]`` uniforms, then one token), so each row is
    distributed exactly as its target, and a seeded row gives the same text in any batch.
    """
    B, k = draft.shape
    if k == 0:  # no drafts anywhere (ar, or one token wanted): the target's own next token
        none = torch.zeros(B, dtype=torch.long, device=logits.device)
        return none, logits[:, 0].argmax(-1) if sampling.greedy else sample_rows(warp(logits[:, 0], sampling), generators)
    drafted = torch.arange(k, device=draft.device)[None, :] < lengths[:, None]  # [B, k]
    if sampling.greedy:
        best = logits.argmax(-1)  # [B, k + 1]
        ok = (best[:, :k] == draft) & drafted
        a = ok.long().cumprod(1).sum(1)
        return a, best.gather(1, a[:, None])[:, 0]
    p = warp(logits, sampling)  # [B, k + 1, V]
    if q is None:
        q = torch.nn.functional.one_hot(draft, p.shape[-1]).double()
    u = torch.ones(B, k, dtype=torch.float64, device=p.device)  # past a row's chain: never drawn, never accepted
    for b, (g, n) in enumerate(zip(generators, lengths.tolist())):
        u[b, :n] = torch.rand(n, generator=g, dtype=torch.float64, device=p.device)
    px = p[:, :k].gather(2, draft[..., None])[..., 0]
    qx = q.gather(2, draft[..., None])[..., 0]
    ok = (u * qx < px) & drafted  # u < p/q without dividing by a possibly tiny q
    a = ok.long().cumprod(1).sum(1)
    rows = torch.arange(B, device=p.device)
    pa = p[rows, a]  # [B, V]
    qa = torch.cat([q, torch.zeros_like(q[:, :1])], 1)[rows, a]  # a == k has no draft: q = 0
    residual = (pa - qa).clamp_min(0.0)
    total = residual.sum(-1, keepdim=True)
    # total == 0 only when p == q, where rejection has probability 0; guard rounding anyway.
    residual = torch.where(total > 0, residual / total.clamp_min(1e-300), pa)
    bonus = (a == lengths)[:, None]  # every drafted token accepted: the next one comes from p itself
    return a, sample_rows(torch.where(bonus, pa, residual), generators)


def recursive_rejection(
    p: torch.Tensor, cands: list[int], q: torch.Tensor | None, replacement: bool, generator: torch.Generator | None
) -> int:
    """One token distributed exactly as p [V], given candidates drafted from q [V].

    SpecInfer's multi-step speculative sampling (Miao et al. 2024, Alg. 2; Chen et al.'s
    rule applied recursively): try c_j with probability min(1, r(c_j) / q_j(c_j)), where r
    starts as p and after each rejection becomes norm(max(0, r - q_j)); if every candidate
    is rejected, sample from the final r. Each try is an exact speculative-sampling step
    for whatever distribution q_j the candidate was really drawn from, so:
      - i.i.d. candidates (``replacement``): q_j = q;
      - candidates drawn without replacement: q_j = q with c_1..c_{j-1} removed, renormalised
        (Yang et al. 2023 / Jeon et al. 2024: without this the output is biased);
      - ``q=None``: candidates chosen deterministically (the draft's top-w, a pruned tree):
        q_j is one-hot, and the rule reduces to sampling Y ~ p and accepting it if drafted.
    """
    if q is None:
        return int(sample(p, generator))
    r, q = p.clone(), q.clone()
    u = torch.rand(len(cands), generator=generator, dtype=torch.float64, device=p.device)
    for j, c in enumerate(cands):
        if u[j] * q[c] < r[c]:
            return c
        rest = (r - q).clamp_min(0.0)
        # rest == 0 only when r == q, where rejection has probability 0; guard rounding.
        r = rest / rest.sum() if rest.sum() > 0 else r
        if not replacement:
            q[c] = 0.0
            if q.sum() <= 0:
                break  # the draft's support is exhausted: no candidate can follow
            q = q / q.sum()
    return int(sample(r, generator))


def _hit(beta: float, k: int) -> float:
    """1 - (1 - beta)^k, accurate for small beta: the chance that one of k tries is accepted."""
    return 1.0 if beta >= 1.0 else float(-np.expm1(k * np.log1p(-beta)))


def kseq_rho(p: torch.Tensor, q: torch.Tensor, k: int, steps: int = 50) -> float:
    """SpecTr's K-SEQ division factor (Sun et al. 2023, K-SEQ draft selection): the smallest
    rho in [1, k] whose residual is a distribution.

    With beta(rho) = sum_x min(q(x), p(x)/rho), the residual p - min(q, p/rho) (1-(1-beta)^k)/beta
    is >= 0 iff rho beta >= 1 - (1 - beta)^k: a token with q >= p/rho needs exactly that, and
    one with q < p/rho is then covered since p > rho q. The left side grows with rho and the
    right side shrinks, so the feasible rhos form [rho*, k] (rho = k by Bernoulli's
    inequality), and rho* gives the largest acceptance 1 - (1 - beta)^k. Bisection returns
    the feasible end of the bracket, within (k - 1) 2^-steps of rho*.
    """
    pn, qn = p.cpu().numpy(), q.cpu().numpy()  # ~50 reductions: numpy's per-call cost is the lower

    def feasible(rho: float) -> bool:
        beta = float(np.minimum(qn, pn / rho).sum())
        return rho * beta >= _hit(beta, k)

    if feasible(1.0):
        return 1.0
    lo, hi = 1.0, float(k)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


def kseq_residual(p: torch.Tensor, q: torch.Tensor, k: int, rho: float | None = None) -> torch.Tensor:
    """K-SEQ's residual p_res ∝ p - min(q, p/rho) (1 - (1 - beta)^k) / beta [V], normalised
    (clamped at 0 against rounding), at ``rho`` (default: ``kseq_rho``)."""
    m = torch.minimum(q, p / (kseq_rho(p, q, k) if rho is None else rho))
    beta = float(m.sum())
    # (1 - (1 - beta)^k) / beta = sum_{j<k} (1 - beta)^j -> k as beta -> 0 (disjoint supports)
    res = (p - m * (_hit(beta, k) / beta if beta > 0 else k)).clamp_min(0.0)
    return res / res.sum() if res.sum() > 0 else p


def kseq(p: torch.Tensor, cands: list[int], q: torch.Tensor, generator: torch.Generator | None) -> int:
    """SpecTr's K-SEQ rule (Sun et al. 2023): one token distributed exactly as p [V], given k
    candidates drawn i.i.d. from q [V].

    Try X_i in turn, accepting with probability min(1, p(X_i) / (rho q(X_i))); if none is
    accepted, sample from the residual (``kseq_residual``). The mass accepted at x is
    min(q, p/rho) sum_i (1 - beta)^(i-1) = min(q, p/rho) (1 - (1 - beta)^k) / beta, and the
    residual carries the rest, so the output is p. The acceptance 1 - (1 - beta)^k is within
    a factor (1 - 1/e) of the optimal coupling's (``paragen.optimum``).
    """
    k = len(cands)
    rho = kseq_rho(p, q, k)
    a = torch.minimum(q, p / rho)  # accepted mass per token and try
    u = torch.rand(k, generator=generator, dtype=torch.float64, device=p.device)
    for j, c in enumerate(cands):
        if u[j] * q[c] < a[c]:
            return c
    return int(sample(kseq_residual(p, q, k, rho), generator))


def verify_tree(
    tree, logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None, rule: str = "rrs"
) -> tuple[list[int], int]:
    """(accepted path of node indices, next token) for a token tree scored in one forward.

    logits [N, V]: the target at every node (``paragen.tree.TokenTree`` order). Walk from
    the root: at each node choose the token the target commits there (greedy: its argmax;
    sampling: ``recursive_rejection`` or ``kseq`` over the node's drafted candidates, which
    gives a token distributed exactly as the target), and descend into the child holding
    that token. The first token with no child is the correction or bonus token.
    """
    path, node = [], 0
    p = None if sampling.greedy else warp(logits, sampling)
    while True:
        if p is None:
            y = int(logits[node].argmax())
        elif rule == "kseq" and tree.q[node] is not None:
            y = kseq(p[node], tree.cands[node], tree.q[node], generator)
        else:
            y = recursive_rejection(p[node], tree.cands[node], tree.q[node], tree.replacement, generator)
        child = tree.child(node, y)
        if child is None:
            return path, y
        path.append(child)
        node = child


def relaxed_accept(draft: list[int], logits: torch.Tensor, rule: str, m: int = 2, eps: float = 1.0) -> tuple[int, int]:
    """LOSSY acceptance (Stern et al. 2018, section 5 "approximate inference"): (accept_len, next token).

    logits [k + 1, V] as in ``verify_chain``. Accept x_i while
      - ``top_m``: x_i is among the target's m most likely tokens there;
      - ``distance``: log p(argmax) - log p(x_i) <= eps. Stern et al.'s distance rule,
        |x_i - argmax| <= eps, is for ordinal outputs (pixel intensities); token ids have
        no order, so the distance is measured in the target's log-probability instead.
    The next token is the target's argmax after the accepted prefix. With m = 1 or eps = 0
    (and no ties) this is greedy acceptance; otherwise the output differs from the target's.
    """
    if rule not in ("top_m", "distance"):
        raise ValueError(f"unknown relaxed acceptance rule '{rule}': top_m or distance")
    a = 0
    while a < len(draft):
        row = logits[a].double()
        if rule == "top_m":
            ok = bool((row > row[draft[a]]).sum() < m)  # fewer than m tokens rank strictly above it
        else:
            lp = torch.log_softmax(row, -1)
            ok = bool(lp.max() - lp[draft[a]] <= eps)
        if not ok:
            break
        a += 1
    return a, int(logits[a].argmax())


def typical_accept_tree(
    tree, logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None,
    epsilon: float = 0.09, delta: float = 0.3,
) -> tuple[list[int], int]:
    """LOSSY: Medusa's typical acceptance (Cai et al. 2024, section 2.3.1) on a token tree.

    logits [N, V] as in ``verify_tree``. A drafted node is typical when the target at its
    parent finds it likely enough, p(x) > min(epsilon, delta * exp(-H(p))) with H the entropy
    of the target's distribution there (p: the warped target when sampling, its softmax at
    temperature 1 when greedy). Among all root paths, keep the longest prefix whose nodes are
    all typical, ties broken by the highest product of p along it (Medusa's reference
    ``evaluate_posterior``: "pick the longest plausible prefix"; then the first in node
    order). The next token is the target's own at its end (argmax, or a sample). The output
    follows neither the target's greedy path nor its distribution.
    """
    p = warp(logits, sampling if not sampling.greedy else SamplingParams(1.0))
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)  # [N]
    threshold = torch.minimum(torch.full_like(entropy, epsilon), delta * torch.exp(-entropy))
    # Every node at once: its own test, then whole-prefix tests and log-likelihoods through the
    # ancestor-or-self mask (row i marks i's root path), so no branch is left unexplored.
    parent = torch.tensor(tree.parents[1:], dtype=torch.long, device=p.device)
    token = torch.tensor(tree.tokens[1:], dtype=torch.long, device=p.device)
    px = p[parent, token]  # [N-1] each drafted node's probability at its parent
    ok = torch.cat([px.new_ones(1, dtype=torch.bool), px > threshold[parent]])  # [N], the root passes
    logq = torch.cat([px.new_zeros(1), px.clamp_min(1e-300).log()])  # [N]
    anc = tree.mask().to(p.device)  # [N, N]
    good = ~(anc & ~ok[None, :]).any(1)  # [N] every node on the root path is typical
    loglik = (anc.to(logq.dtype) * logq[None, :]).sum(1)  # [N]
    depth = torch.tensor(tree.depths, device=p.device, dtype=logq.dtype)
    # lexicographic (depth, likelihood): a depth step outweighs any likelihood difference
    score = torch.where(good, depth, torch.full_like(depth, -1.0))
    best = score.max()
    cand = torch.where(score == best, loglik, torch.full_like(loglik, float("-inf")))
    node = int(cand.argmax())  # argmax returns the first of equal maxima
    y = int(logits[node].argmax()) if sampling.greedy else int(sample(p[node], generator))
    return tree.path(node), y
