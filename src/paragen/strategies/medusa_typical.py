"""``medusa_typical``: Medusa's tree with typical acceptance (Cai et al. 2024, section 2.3.1): LOSSY.

Instead of the exact rule (greedy argmax matching, or recursive rejection when sampling),
a drafted token is kept when the target finds it typical enough: p(x) > min(epsilon,
delta exp(-H(p))) (``paragen.verify.typical_accept_tree``). High-entropy positions accept
more candidates, which lengthens accepted paths at the cost of exactness. Medusa's
defaults: epsilon 0.09, delta 0.3 (its posterior_threshold and posterior_alpha).

A separate strategy rather than an option of ``medusa`` so that its ``lossless`` flag
(False) is what the API, the bench and the reports read; its stats say
``extra["lossy"] = True``. Tree growth and the one-call step are ``medusa``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.errors import UnsupportedOptionError
from paragen.strategies.drafter import TreeRow
from paragen.strategies.medusa import Medusa, MedusaOptions
from paragen.tree import TokenTree
from paragen.verify import typical_accept_tree


@dataclass(frozen=True)
class MedusaTypicalOptions(MedusaOptions):
    """Settings of ``medusa_typical``; each field's help is shown by ``paragen generate --help``."""

    epsilon: float = field(default=0.09, metadata={"help": "LOSSY: the hard probability threshold (posterior_threshold)"})
    delta: float = field(default=0.3, metadata={"help": "LOSSY: the entropy-scaled threshold's factor (posterior_alpha)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 <= self.epsilon <= 1 and self.delta >= 0):
            raise UnsupportedOptionError(f"medusa_typical: epsilon must be in [0, 1] and delta >= 0, "
                                         f"got {self.epsilon}, {self.delta}")


class MedusaTypical(Medusa):
    name = "medusa_typical"
    Options = MedusaTypicalOptions
    lossless = False
    summary = "LOSSY medusa: drafted tokens kept when the target finds them typical (entropy-scaled threshold)"

    def new_row(self, b: int, states: torch.Tensor | None) -> TreeRow:
        row = super().new_row(b, states)
        row.stats.update(lossy=True, acceptance=f"typical epsilon={self.opts.epsilon} delta={self.opts.delta}")
        return row

    def verify(self, b: int, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
        return typical_accept_tree(tree, logits, self.ctx.sampling, self.rows[b].generator, self.opts.epsilon,
                                   self.opts.delta)
