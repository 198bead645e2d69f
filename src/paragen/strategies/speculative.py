"""``speculative``: speculative decoding and sampling with a draft model (Leviathan et al. 2023;
Chen et al. 2023).

Each step the draft proposes a chain of k tokens autoregressively (with its own cache),
the target scores all k + 1 positions in one forward, and ``verify`` accepts a prefix:
argmax matching when greedy, the speculative-sampling rule otherwise. Lossless in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.errors import UnsupportedOptionError
from paragen.sampling import warp
from paragen.strategies.base import Strategy, catch_up, feed, prefill_cache
from paragen.verify import verify_chain


@dataclass(frozen=True)
class SpeculativeOptions:
    """Settings of ``speculative``; each field's help is shown by ``paragen generate --help``."""

    k: int = field(default=4, metadata={"help": "draft tokens per step (the maximum when adaptive); >= 1"})
    adaptive: bool = field(default=False, metadata={
        "help": "transformers' heuristic: k += 2 after a fully accepted chain, else k -= 1 (between 1 and k)"})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UnsupportedOptionError(f"speculative: k must be >= 1, got {self.k}")


class Speculative(Strategy):
    name = "speculative"
    Options = SpeculativeOptions
    needs_draft = True
    summary = "draft model proposes k tokens, target verifies them in one call"

    @classmethod
    def slack(cls, o: SpeculativeOptions) -> int:
        return o.k + 1

    def prefill(self, prompt: list[int]) -> None:
        ctx = self.ctx
        super().prefill(prompt)
        self.draft_cache = ctx.draft.new_cache(ctx.cache_length)
        prefill_cache(ctx.draft, self.draft_cache, self.seq)
        self.k = self.opts.k
        ctx.extra.update(proposed=[0] * self.opts.k, accepted=[0] * self.opts.k, nodes=0)

    def propose(self, k: int) -> tuple[list[int], torch.Tensor | None]:
        """k draft tokens, and their warped draft probabilities q [k, V] when sampling
        (greedy verification compares tokens only)."""
        ctx, draft, qs = self.ctx, [], []
        logits = catch_up(ctx.draft, self.draft_cache, self.seq)
        for i in range(k):
            if ctx.sampling.greedy:
                x = int(logits.argmax())
            else:
                qs.append(warp(logits, ctx.sampling))
                x = int(torch.multinomial(qs[-1], 1, generator=ctx.generator))
            draft.append(x)
            if i + 1 < k:  # the last draft token needs no draft forward
                logits = feed(ctx.draft, self.draft_cache, [x], len(self.seq) + i)[-1]
                self.draft_cache.commit(1)
        return draft, torch.stack(qs) if qs else None

    def step(self, budget: int) -> list[int]:
        ctx, n = self.ctx, len(self.seq)
        k = min(self.k, budget - 1)
        # 1. propose: a chain of k draft tokens (none when only one token is wanted)
        draft, q = self.propose(k) if k > 0 else ([], None)
        # 2. verify: one target forward over the newest committed token and the chain
        logits = feed(ctx.target, self.cache, [self.seq[-1], *draft], n - 1)
        accept_len, nxt = verify_chain(draft, logits, ctx.sampling, ctx.generator, q)
        # 3. commit: the target keeps seq[-1] and the accepted drafts; the draft cache
        #    drops what it wrote past the accepted prefix
        self.cache.commit(accept_len + 1)
        self.draft_cache.truncate(min(self.draft_cache.length, n + accept_len))
        committed = [*draft[:accept_len], nxt]
        self.seq.extend(committed)
        self.record(k, accept_len)
        return committed

    def record(self, k: int, accept_len: int) -> None:
        self.ctx.extra["nodes"] += k
        for i in range(k):
            self.ctx.extra["proposed"][i] += 1
            self.ctx.extra["accepted"][i] += int(i < accept_len)
        if self.opts.adaptive and k > 0:
            self.k = min(self.opts.k, self.k + 2) if accept_len == k else max(1, self.k - 1)
