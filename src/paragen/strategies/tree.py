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

import torch

from paragen.errors import UnsupportedOptionError
from paragen.strategies.drafter import TreeDraftStrategy
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
    trace_source = "draft"
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

    def depth(self, row: int) -> int:
        return self.opts.depth if self.opts.shape == "dynamic" else len(parse_widths(self.opts.widths))

    def grow(self, row: int, depth: int) -> TokenTree:
        return self.grow_dynamic(row, depth) if self.opts.shape == "dynamic" else self.grow_static(row, depth)

    def grow_static(self, row: int, depth: int) -> TokenTree:
        o, greedy, drafter = self.opts, self.ctx.sampling.greedy, self.drafters[row]
        widths = parse_widths(o.widths)[:depth]
        tree, logits = drafter.start(self.seqs[row])
        level, logits = [0], logits[None]
        for d, w in enumerate(widths):
            for node, q in zip(level, self.draft_probs(logits)):
                support = int((q > 0).sum())
                if greedy or o.draw == "top":
                    draws = q.topk(min(w, support)).indices
                else:
                    draws = torch.multinomial(q, w if o.draw == "with" else min(w, support),
                                              replacement=o.draw == "with", generator=self.generators[row])
                    tree.q[node] = q
                for t in draws.tolist():
                    tree.add(node, t)
            level = tree.level(d + 1)
            if d + 1 < len(widths):
                logits = drafter.expand(tree, level)
        tree.replacement = o.draw == "with"
        return tree

    def grow_dynamic(self, row: int, depth: int) -> TokenTree:
        o, drafter = self.opts, self.drafters[row]
        tree, logits = drafter.start(self.seqs[row])
        score = {0: 0.0}  # log of the path product of draft probabilities
        frontier, logits = [0], logits[None]
        for d in range(depth):
            new = []
            for node, q in zip(frontier, self.draft_probs(logits)):
                top = q.topk(min(o.topk, int((q > 0).sum())))
                for pr, t in zip(top.values.log().tolist(), top.indices.tolist()):
                    child = tree.add(node, t)
                    score[child] = score[node] + pr
                    new.append(child)
            if d + 1 == depth:
                break
            frontier = sorted(new, key=lambda i: -score[i])[: o.topk]
            logits = drafter.expand(tree, frontier)
        # Ties broken by index keep a parent (equal score, smaller index) before its child.
        best = sorted(score.keys() - {0}, key=lambda i: (-score[i], i))[: o.budget]
        tree, new = tree.subtree(best)
        drafter.renumber(new)
        return tree
