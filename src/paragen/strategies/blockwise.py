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
distribution. Batched (``ChainStrategy``): each row proposes from its own state, with its own
accept length. The relaxed acceptance rules are a separate, lossy strategy
(``blockwise_relaxed``). Runs on ``blockwise`` or ``medusa`` heads (both read one hidden state).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.errors import HeadsMismatchError, UnsupportedOptionError
from paragen.sampling import sample_rows, warp
from paragen.strategies.base import ChainStrategy, DecodeContext

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


class Blockwise(ChainStrategy):
    name = "blockwise"
    Options = BlockwiseOptions
    trace_source = "heads"
    head_kinds = ("blockwise", "medusa")
    summary = "prediction heads propose k tokens, target verifies them and scores the next proposals in one call"
    reads_hidden = True

    @classmethod
    def slack(cls, o: BlockwiseOptions) -> int:
        return 1 + (o.k or MAX_HEADS)

    def __init__(self, ctx: DecodeContext, options: BlockwiseOptions) -> None:
        super().__init__(ctx, options)
        heads = ctx.heads
        self.k = options.k or heads.num_heads
        if self.k > heads.num_heads or self.k > MAX_HEADS:
            raise HeadsMismatchError(f"{self.name}: k={self.k} but the heads have {heads.num_heads} (at most {MAX_HEADS} used)")

    def propose(self, budgets: list[int]) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """Each ready row's first k head proposals from its ``hidden`` state (fewer near its
        budget), and their q [B, k, V] when sampling."""
        lengths = [min(self.k, b - 1) if row.ready else 0 for b, row in zip(budgets, self.rows)]
        k = max(lengths)
        if k == 0:
            return torch.zeros(len(budgets), 0, dtype=torch.long, device=self.ctx.target.device), lengths, None
        logits = self.ctx.heads(self.hidden)[:, :k]  # [B, k, V]
        if self.ctx.sampling.greedy:
            return logits.argmax(-1), lengths, None
        q = warp(logits, self.ctx.sampling)
        return sample_rows(q, self.generators, lengths), lengths, q
