"""``ar``: plain autoregressive decoding with the KV cache: the reference every strategy is measured against.

A chain strategy with no draft: each step the target reads each row's newest token and
commits its next one (argmax, or a sample), for a batch of rows at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paragen.strategies.base import ChainStrategy, OwnRow


@dataclass(frozen=True)
class AROptions:
    """``ar`` has no settings."""


class AR(ChainStrategy):
    name = "ar"
    Options = AROptions
    summary = "one token per target call (the reference)"

    def new_row(self, b: int, states: torch.Tensor | None) -> OwnRow:
        return OwnRow()  # it verifies no guesses: no draft statistics

    def propose(self, budgets: list[int]) -> tuple[torch.Tensor, list[int], None]:
        B = len(budgets)
        return torch.zeros(B, 0, dtype=torch.long, device=self.ctx.target.device), [0] * B, None
