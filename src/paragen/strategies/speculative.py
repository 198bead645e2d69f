"""``speculative``: speculative decoding and sampling with a draft model (Leviathan et al. 2023;
Chen et al. 2023).

Each step the draft proposes a chain of k tokens autoregressively (with its own cache),
the target scores all k + 1 positions in one forward, and ``verify_chains`` accepts a
prefix: argmax matching when greedy, the speculative-sampling rule otherwise. Lossless in
both. In a batch, every row drafts the batch's longest chain (one draft call per level),
and a row whose own k is shorter (adaptive, or near its budget) verifies only its first k:
its output and statistics are those of its batch-of-one run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.errors import UnsupportedOptionError
from paragen.strategies.base import ChainStrategy, OwnRow, catch_up_rows, draw, feed_rows, prefill_rows
from paragen.strategies.counts import new_counts


@dataclass(frozen=True)
class SpeculativeOptions:
    """Settings of ``speculative``; each field's help is shown by ``paragen generate --help``."""

    k: int = field(default=4, metadata={"help": "draft tokens per step (the maximum when adaptive); >= 1"})
    adaptive: bool = field(default=False, metadata={
        "help": "transformers' heuristic: k += 2 after a fully accepted chain, else k -= 1 (between 1 and k)"})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise UnsupportedOptionError(f"speculative: k must be >= 1, got {self.k}")


@dataclass
class SpeculativeRow(OwnRow):
    k: int = 1  # the row's draft length this step (adaptive moves it)


class Speculative(ChainStrategy):
    name = "speculative"
    Options = SpeculativeOptions
    trace_source = "draft"
    needs_draft = True
    summary = "draft model proposes k tokens, target verifies them in one call"
    row_caches = ("draft_cache",)

    @classmethod
    def slack(cls, o: SpeculativeOptions) -> int:
        return o.k + 1

    def prepare_rows(self, states: torch.Tensor | None) -> None:
        ctx = self.ctx
        super().prepare_rows(states)
        self.draft_cache = ctx.draft.new_cache(ctx.cache_length, batch=len(self.seqs))
        prefill_rows(ctx.draft, self.draft_cache, self.seqs)

    def new_row(self, b: int, states: torch.Tensor | None) -> SpeculativeRow:
        return SpeculativeRow(new_counts(), self.opts.k)

    def propose(self, budgets: list[int]) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """Each row's k draft tokens, and their warped draft probabilities q when sampling
        (greedy verification compares tokens only). The tokens stay on the device."""
        ctx = self.ctx
        lengths = [min(own.k, budget - 1) for own, budget in zip(self.own, budgets)]
        K = max(lengths)
        if K == 0:  # only one token wanted from every row: no draft
            return torch.zeros(len(budgets), 0, dtype=torch.long, device=ctx.target.device), lengths, None
        logits = catch_up_rows(ctx.draft, self.draft_cache, self.seqs)  # [B, V]
        xs, qs = [], []
        for i in range(K):
            x, q = draw(logits, ctx.sampling, self.generators, [int(i < n) for n in lengths])
            xs.append(x)
            qs.append(q)
            if i + 1 < K:  # the last draft token needs no draft forward
                logits = feed_rows(ctx.draft, self.draft_cache, x[:, None])[:, -1]
                self.draft_cache.commit(1)
        return torch.stack(xs, 1), lengths, None if ctx.sampling.greedy else torch.stack(qs, 1)

    def accepted(self, accept: list[int], lengths: list[int], before: list[int]) -> None:
        # The draft cache drops what it wrote past each row's accepted prefix.
        self.draft_cache.truncate_rows([min(d, n + a) for d, n, a in zip(self.draft_cache.rows, before, accept)])
        if self.opts.adaptive:
            for own, k, a in zip(self.own, lengths, accept):
                if k > 0:
                    own.k = min(self.opts.k, own.k + 2) if a == k else max(1, own.k - 1)
