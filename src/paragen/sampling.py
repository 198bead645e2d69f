"""Logits -> probabilities under temperature, top-k and top-p; seeded sampling.

The same warp is applied to target and draft distributions, so speculative sampling
stays exact with respect to the *warped* target distribution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from paragen.errors import InvalidInputError


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` is greedy (argmax); top-k and top-p then have no effect.

    Order (as in transformers): divide by temperature, keep the ``top_k`` largest logits,
    then keep the smallest set of most likely tokens whose probability reaches ``top_p``
    (a token is kept iff the mass of the tokens ranked above it is below ``top_p``).
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidInputError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise InvalidInputError(f"top_k must be an integer >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise InvalidInputError(f"top_p must be in (0, 1] or None, got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities [..., V] in float64 (ratios p/q in the acceptance test need the precision)."""
    x = logits.double()
    if params.greedy:
        return torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1]).double()
    x = x / params.temperature
    if params.top_k is not None and params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    p = torch.softmax(x, dim=-1)
    if params.top_p is not None and params.top_p < 1.0:
        sp, idx = torch.sort(p, dim=-1, descending=True)
        above = torch.cumsum(sp, dim=-1) - sp  # mass ranked strictly above each token
        sp = sp.masked_fill(above >= params.top_p, 0.0)
        p = torch.zeros_like(p).scatter(-1, idx, sp)
        p = p / p.sum(-1, keepdim=True)
    return p


def sample(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of p [..., V] (float64 probabilities)."""
    flat = p.reshape(-1, p.shape[-1])
    out = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return out.reshape(p.shape[:-1])


def sample_rows(p: torch.Tensor, generators: Sequence[torch.Generator | None],
                counts: Sequence[int] | None = None) -> torch.Tensor:
    """Tokens [B, K] (or [B] for p [B, V]) from p [B, K, V], row b drawn with ``generators[b]``,
    so a row's draws never depend on the other rows of its batch (a seeded row gives the same
    text alone or in any batch). With ``counts`` row b draws only its first ``counts[b]``
    positions (for p [B, V]: 0 or 1), as many as it would alone; the rest are the argmax."""
    rows = p if p.dim() == 3 else p[:, None]  # [B, K, V]
    out = rows.argmax(-1)
    for b, g in enumerate(generators):
        n = rows.shape[1] if counts is None else counts[b]
        if n:
            out[b, :n] = sample(rows[b, :n], g)
    return out if p.dim() == 3 else out[:, 0]


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token from one position's logits [V]: argmax when greedy, else a sample."""
    if params.greedy:
        return int(logits.argmax(-1))
    return int(sample(warp(logits, params), generator))
