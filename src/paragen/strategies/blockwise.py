"""``blockwise``: blockwise parallel decoding (Stern et al. 2018) with prediction heads.

The target's own output predicts the next token; K heads on the same hidden state predict
the K tokens after it. Each step:

1. propose: the heads' tokens, read from the hidden state that predicted the newest
   committed token (greedy: each head's top-1; sampling: a draw from each head's warped
   distribution, which is then the draft's q);
2. verify: one target forward over the newest token and the proposals; accept the longest
   prefix the target agrees with (``verify_chain``: argmax matching, or speculative
   sampling), plus the target's own next token;
3. commit: the same forward returned the hidden state at every proposed position, so the
   heads' proposals for the next block come from the last accepted position's state with
   no further call (Stern et al.'s combined scoring and proposal, section 4): one target
   call per step.

Lossless: greedy output is ``ar``'s token for token, sampling follows the target's
distribution. The relaxed acceptance rules are a separate, lossy strategy
(``blockwise_relaxed``). Runs on ``blockwise`` or ``medusa`` heads (both read one hidden state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.errors import HeadsMismatchError, UnsupportedOptionError
from paragen.sampling import warp
from paragen.strategies.base import Strategy, feed, prefill_hidden
from paragen.verify import verify_chain

MAX_HEADS = 16  # k = 0 ("every head") reserves cache room for this many


@dataclass(frozen=True)
class BlockwiseOptions:
    """Settings of ``blockwise``; each field's help is shown by ``paragen generate --help``."""

    k: int = field(default=0, metadata={
        "help": "heads used per step, so at most k + 1 tokens per call; 0: every head. Stern et al.'s block size "
        "is k + 1 (their k = 2, 4, 8 are k = 1, 3, 7 here); >= 0"})

    def __post_init__(self) -> None:
        if not 0 <= self.k <= MAX_HEADS:
            raise UnsupportedOptionError(f"blockwise: k must be between 0 (every head) and {MAX_HEADS}, got {self.k}")


class Blockwise(Strategy):
    name = "blockwise"
    Options = BlockwiseOptions
    head_kinds = ("blockwise", "medusa")
    summary = "prediction heads propose k tokens, target verifies them and scores the next proposals in one call"

    @classmethod
    def slack(cls, o: BlockwiseOptions) -> int:
        return 1 + (o.k or MAX_HEADS)

    def prefill(self, prompt: list[int]) -> None:
        heads = self.ctx.heads
        self.k = self.opts.k or heads.num_heads
        if self.k > heads.num_heads or self.k > MAX_HEADS:
            raise HeadsMismatchError(f"{self.name}: k={self.k} but the heads have {heads.num_heads} (at most {MAX_HEADS} used)")
        self.seq = list(prompt)
        self.cache = self.ctx.target.new_cache(self.ctx.cache_length)
        self.hidden = prefill_hidden(self.ctx.target, self.cache, self.seq)
        self.ctx.extra.update(proposed=[0] * self.k, accepted=[0] * self.k, nodes=0, lossy=not self.lossless)

    def propose(self, k: int) -> tuple[list[int], torch.Tensor | None]:
        """k proposals from the heads at ``self.hidden``, and their q [k, V] when sampling."""
        if k == 0:
            return [], None
        logits = self.ctx.heads(self.hidden)[:k]  # [k, V]
        if self.ctx.sampling.greedy:
            return logits.argmax(-1).tolist(), None
        q = warp(logits, self.ctx.sampling)
        return torch.multinomial(q, 1, generator=self.ctx.generator)[:, 0].tolist(), q

    def verify(self, draft: list[int], logits: torch.Tensor, q: torch.Tensor | None) -> tuple[int, int]:
        return verify_chain(draft, logits, self.ctx.sampling, self.ctx.generator, q)

    def step(self, budget: int) -> list[int]:
        ctx, n = self.ctx, len(self.seq)
        k = 0 if self.hidden is None else min(self.k, budget - 1)
        # 1. propose: the heads' block
        draft, q = self.propose(k)
        # 2. verify: one forward scores the block and returns the states the next block comes from
        logits, hidden = feed(ctx.target, self.cache, [self.seq[-1], *draft], n - 1, hidden=True)
        accept_len, nxt = self.verify(draft, logits, q)
        # 3. commit: keep the newest token and the accepted proposals; the next proposals
        #    come from the state at the last accepted position (the one that predicted nxt)
        self.cache.commit(accept_len + 1)
        self.hidden = hidden[accept_len]
        committed = [*draft[:accept_len], nxt]
        self.seq.extend(committed)
        ctx.extra["nodes"] += k
        for i in range(k):
            ctx.extra["proposed"][i] += 1
            ctx.extra["accepted"][i] += int(i < accept_len)
        return committed
