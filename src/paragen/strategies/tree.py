"""``tree``: token-tree speculative decoding with a draft model (SpecInfer, Miao et al. 2024;
OPT-Tree, Wang et al. 2024; EAGLE-2's dynamic tree, Li et al. 2024).

Each step the draft grows a tree of candidate continuations (one draft call per level),
the target scores every node in one forward with an ancestor mask (``paragen.tree``), and
``verify_tree`` walks the tree: greedy follows the child equal to the target's argmax;
sampling chooses each node's token by recursive rejection over its drafted children, so
the output is exactly the target's in both cases. Two shapes:

  - ``static``: ``widths[d]`` children for every node at depth d (Medusa/SpecInfer style);
  - ``dynamic``: at each depth expand the ``topk`` nodes with the highest path product of
    draft probabilities, each into its ``topk`` most likely children, then keep the
    ``budget`` best nodes overall (OPT-Tree / EAGLE-2: the path product is the draft's
    estimate of the chance the target accepts that node, so this maximises the expected
    accepted length under the draft's estimate). A node's score never exceeds its
    parent's, so the best ``budget`` nodes form a tree.

Sampling: the dynamic tree's candidates are chosen deterministically from the draft, so
each node accepts a token Y ~ p iff it was drafted (recursive rejection with one-hot q).
A static tree may instead sample its children from the draft (``draw``), without
replacement (q renormalised after each rejection) or i.i.d.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paragen.errors import UnsupportedOptionError
from paragen.strategies.drafter import TreeDraftStrategy, grow_dynamic, grow_static
from paragen.tree import TokenTree

DRAWS = ("top", "without", "with")


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in str(text).split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise UnsupportedOptionError(f"tree: widths must be positive integers separated by commas (e.g. 4,2,2,1), got '{text}'")
    return widths


def static_nodes(widths: str) -> int:
    """Nodes of a static tree whose depth-d nodes all get widths[d] children (4,2,2,1: 44)."""
    total, level = 0, 1
    for w in parse_widths(widths):
        level *= w
        total += level
    return total


@dataclass(frozen=True)
class TreeOptions:
    """Settings of ``tree``; each field's help is shown by ``paragen generate --help``."""

    shape: str = field(default="dynamic", metadata={
        "help": "dynamic (best nodes by draft path probability under a budget) or static (fixed widths per depth)"})
    budget: int = field(default=16, metadata={"help": "dynamic: drafted nodes verified per call; >= 1"})
    depth: int = field(default=5, metadata={"help": "dynamic: draft levels, i.e. draft calls per step; >= 1"})
    topk: int = field(default=4, metadata={"help": "dynamic: nodes expanded per level and children per expanded node; >= 1"})
    widths: str = field(default="4,2,2,1", metadata={
        "help": "static: children per node at each depth, comma-separated positive integers (4,2,2,1: 44 nodes)"})
    draw: str = field(default="top", metadata={
        "help": "static, sampling: children are the draft's top-w (top), sampled without replacement (without) or "
        "i.i.d. (with); verified by recursive rejection"})

    def __post_init__(self) -> None:
        if self.shape not in ("static", "dynamic"):
            raise UnsupportedOptionError(f"tree: shape must be 'static' or 'dynamic', got '{self.shape}'")
        if self.budget < 1 or self.depth < 1 or self.topk < 1:
            raise UnsupportedOptionError(
                f"tree: budget, depth and topk must be >= 1, got {self.budget}, {self.depth}, {self.topk}")
        parse_widths(self.widths)
        if self.draw not in DRAWS:
            raise UnsupportedOptionError(f"tree: draw must be one of {', '.join(DRAWS)}, got '{self.draw}'")
        if self.shape == "dynamic" and self.draw != "top":
            raise UnsupportedOptionError("tree: a dynamic tree drafts its candidates deterministically (draw=top); "
                                         "sampled children need shape=static")

    def nodes(self) -> int:
        """Drafted nodes per step at most."""
        return self.budget if self.shape == "dynamic" else static_nodes(self.widths)


class Tree(TreeDraftStrategy):
    name = "tree"
    Options = TreeOptions
    summary = "draft model proposes a token tree (static or dynamic), target verifies it in one call"

    @classmethod
    def slack(cls, o: TreeOptions) -> int:
        # The target writes the root and the kept nodes; the draft's cache holds every node
        # it expanded, which a dynamic tree may prune away: (depth - 1) levels of topk.
        expanded = (o.depth - 1) * o.topk if o.shape == "dynamic" else 0
        return 1 + max(o.nodes(), expanded)

    @classmethod
    def call_tokens(cls, o: TreeOptions) -> int:
        return 1 + o.nodes()

    def propose(self, budgets: list[int]) -> list[TokenTree]:
        """Each row's tree from its drafter, as deep as the options and its budget allow."""
        o = self.opts
        levels = o.depth if o.shape == "dynamic" else len(parse_widths(o.widths))
        return self.trees([min(levels, n - 1) if own.drafter.ready else 0 for own, n in zip(self.own, budgets)],
                          self.grow)

    def grow(self, b: int, depth: int) -> TokenTree:
        o, drafter, seq = self.opts, self.own[b].drafter, self.rows[b].seq
        if o.shape == "dynamic":
            return grow_dynamic(drafter, seq, depth, o.topk, o.budget, self.draft_sampling())
        draw = "top" if self.ctx.sampling.greedy else o.draw  # greedy: the children only need ranking
        return grow_static(drafter, seq, parse_widths(o.widths)[:depth], self.draft_sampling(), draw,
                           self.rows[b].generator)
