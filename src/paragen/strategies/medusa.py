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
from paragen.sampling import SamplingParams, warp
from paragen.strategies.base import DecodeContext
from paragen.strategies.drafter import TreeDraftStrategy
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

    def new_drafter(self, row: int, states: torch.Tensor | None) -> None:
        return None  # the heads, read from ``hidden``

    def depth(self, row: int) -> int:
        return len(self.widths) if self.ready[row] else 0  # a one-token prompt has no state yet

    def before_grow(self) -> None:
        """Every head's logits at every row's state, in one heads call."""
        self.head_logits = self.ctx.heads(self.hidden)  # [B, K, V]

    def child_logits(self, row: int, tree: TokenTree, level: list[int], depth: int) -> torch.Tensor:
        """Logits [len(level), V] of the children of row ``row``'s nodes at ``depth``: head
        ``depth``'s, the same for every node (Medusa heads do not see the tokens before them)."""
        return self.head_logits[row, depth].expand(len(level), -1)

    def grow(self, row: int, depth: int) -> TokenTree:
        ctx, o = self.ctx, self.opts
        sampled = not ctx.sampling.greedy and o.draw == "sample"
        tree, level = TokenTree(self.seqs[row][-1]), [0]
        for d in range(depth):
            # when greedy the probabilities only rank candidates: the heads' own softmax
            qs = warp(self.child_logits(row, tree, level, d), ctx.sampling if sampled else SamplingParams(1.0))
            for node, q in zip(level, qs):
                w = min(self.widths[d], int((q > 0).sum()))
                if sampled:
                    cands = torch.multinomial(q, w, replacement=False, generator=self.generators[row])
                    tree.q[node] = q
                else:
                    cands = q.topk(w).indices
                for t in cands.tolist():
                    tree.add(node, t)
            level = tree.level(d + 1)
        tree.replacement = False
        return tree

    def commit(self, paths: list[list[int]], depths: list[int], states: torch.Tensor | None) -> None:
        """Nothing to follow: the heads read ``hidden``, which the step keeps current."""
