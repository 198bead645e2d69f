"""``ar``: plain autoregressive decoding with the KV cache: the reference every strategy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from paragen.sampling import choose
from paragen.strategies.base import Strategy, feed


@dataclass(frozen=True)
class AROptions:
    """``ar`` has no settings."""


class AR(Strategy):
    name = "ar"
    Options = AROptions
    summary = "one token per target call (the reference)"

    def step(self, budget: int) -> list[int]:
        n = len(self.seq)
        logits = feed(self.ctx.target, self.cache, [self.seq[-1]], n - 1)
        self.cache.commit(1)
        token = choose(logits[-1], self.ctx.sampling, self.ctx.generator)
        self.seq.append(token)
        return [token]
