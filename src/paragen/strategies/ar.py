"""``ar``: plain autoregressive decoding with the KV cache: the reference every strategy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from paragen.sampling import choose
from paragen.strategies.base import Strategy, feed, prefill_cache


@dataclass(frozen=True)
class AROptions:
    """``ar`` has no settings."""


class AR(Strategy):
    name = "ar"
    Options = AROptions
    summary = "one token per target call (the reference)"

    def prefill(self, prompt: list[int]) -> None:
        self.seq = list(prompt)
        self.cache = self.ctx.target.new_cache(self.ctx.cache_length)
        prefill_cache(self.ctx.target, self.cache, self.seq)

    def step(self, budget: int) -> list[int]:
        n = len(self.seq)
        logits = feed(self.ctx.target, self.cache, [self.seq[-1]], n - 1)
        self.cache.commit(1)
        token = choose(logits[-1], self.ctx.sampling, self.ctx.generator)
        self.seq.append(token)
        return [token]
