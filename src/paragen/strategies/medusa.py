"""``medusa``: a token tree from prediction heads, verified in one target call (Cai et al. 2024).

Each head predicts one depth of the continuation (head d: the token d + 2 places after the
state that predicted the newest committed token), independently of the tokens before it,
so the candidates form a static tree: every node at depth d gets the same ``widths[d]``
children, head d's most likely tokens (Medusa's sparse trees pick a subset of these paths;
``widths`` bounds the tree instead: "4,2,2,1" is 4 + 8 + 16 + 16 nodes). The target
scores every node in one forward with the tree mask (``paragen.tree``); ``verify_tree``
walks it (greedy: argmax; sampling: recursive rejection, exact); the same forward's
hidden state at the last accepted node gives the next tree's heads' predictions, so a
step is one target call, as in ``blockwise``.

Batched as every tree strategy (``TreeDraftStrategy``): each row grows its own tree from its
own state (the heads read every row's state in one call), one forward scores the padded
trees, and each row keeps its own path.

Sampling, ``draw``: "top" takes the heads' top-w as deterministic candidates (q = None:
a node accepts Y ~ p iff Y was drafted); "sample" draws each node's children from the
head's warped distribution without replacement, recorded as the node's q, which
recursive rejection renormalises after each rejected child. Both are lossless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.errors import UnsupportedOptionError
from paragen.sampling import SamplingParams
from paragen.strategies.base import DecodeContext
from paragen.strategies.counts import new_counts
from paragen.strategies.drafter import Drafter, TreeDraftStrategy, TreeRow, grow_static
from paragen.strategies.tree import parse_widths, static_nodes
from paragen.tree import TokenTree


@dataclass(frozen=True)
class MedusaOptions:
    """Settings of ``medusa``; each field's help is shown by ``paragen generate --help``."""

    widths: str = field(default="4,2,2,1", metadata={
        "help": "children per node at each depth, one depth per head, comma-separated positive integers "
        "(depths past the last head are dropped)"})
    draw: str = field(default="top", metadata={
        "help": "sampling: top (each head's top-w, deterministic) or sample (drawn from the head without replacement)"})

    def __post_init__(self) -> None:
        parse_widths(self.widths)
        if self.draw not in ("top", "sample"):
            raise UnsupportedOptionError(f"medusa, hydra: draw must be 'top' or 'sample', got '{self.draw}'")

    def nodes(self) -> int:
        return static_nodes(self.widths)


class HeadsDrafter:
    """One row's Medusa heads as a drafter: head d's logits for every node at depth d (Medusa
    heads do not see the tokens before the one they draft)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits  # [K, V] every head at the row's state

    def start(self, seq: list[int]) -> tuple[TokenTree, torch.Tensor]:
        return TokenTree(seq[-1]), self.logits[0]

    def expand(self, tree: TokenTree, nodes: list[int]) -> torch.Tensor:
        return self.logits[tree.depths[nodes[0]]].expand(len(nodes), -1)


class Medusa(TreeDraftStrategy):
    name = "medusa"
    Options = MedusaOptions
    trace_source = "heads"
    needs_draft = False
    head_kinds = ("medusa", "blockwise")
    summary = "prediction heads' top candidates form a token tree, target verifies it in one call"
    reads_hidden = True  # each row's next tree is drafted from its state

    @classmethod
    def slack(cls, o: MedusaOptions) -> int:
        return 1 + o.nodes()

    def __init__(self, ctx: DecodeContext, options: MedusaOptions) -> None:
        super().__init__(ctx, options)
        # one depth per head: depths beyond the heads' count are dropped (as blockwise's k=0 uses every head)
        self.widths = parse_widths(options.widths)[: ctx.heads.num_heads]

    def new_row(self, b: int, states: torch.Tensor | None) -> TreeRow:
        return TreeRow(new_counts())  # the heads read ``hidden``, which the step keeps current

    def propose(self, budgets: list[int]) -> list[TokenTree]:
        """Each ready row's static tree from its heads' drafter (a one-token prompt has no state yet)."""
        depths = [min(len(self.widths), n - 1) if row.ready else 0 for row, n in zip(self.rows, budgets)]
        drafters = self.drafters() if max(depths) else []
        sampled = not self.ctx.sampling.greedy and self.opts.draw == "sample"
        # when not sampled the probabilities only rank candidates: the heads' own softmax
        sampling, draw = (self.ctx.sampling, "without") if sampled else (SamplingParams(1.0), "top")
        return self.trees(depths, lambda b, depth: grow_static(drafters[b], self.rows[b].seq, self.widths[:depth],
                                                               sampling, draw, self.rows[b].generator))

    def drafters(self) -> list[Drafter]:
        """This step's drafter of every row: every head's logits at every row's state, in one heads call."""
        return [HeadsDrafter(logits) for logits in self.ctx.heads(self.hidden)]  # [B, K, V]
