"""Acceptance rules for draft-and-verify decoding.

Notation: ``k`` drafted tokens ``x[0..k)``; ``p`` target probabilities at the k+1
positions that follow the last committed token (``p[i]`` scores ``x[i]``; ``p[k]`` gives
the bonus token); ``q`` the draft's probabilities for ``x``.
"""

from __future__ import annotations

import torch

from paragen.sampling import SamplingParams, sample, warp


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
        u = torch.rand(k, generator=generator, dtype=torch.float64)
        idx = torch.arange(k)
        x = torch.tensor(draft)
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
        q = torch.nn.functional.one_hot(torch.tensor(draft, dtype=torch.long), p.shape[-1]).double()
    return speculative_accept(draft, q, p, generator)
