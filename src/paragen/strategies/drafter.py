"""A draft model growing a token tree level by level, with its cache kept in step.

Shared by the tree-shaped draft-and-verify strategies (``tree``, ``spectr``). One draft
call per level: the nodes to expand are fed together, each seeing the committed sequence,
its own ancestors among the nodes fed before, and itself. Those slots stay in the draft's
cache until verification; then ``accept`` keeps the accepted path's slots (``keep``) and
drops the rest, so the next step's ``catch_up`` feeds only what the draft has not seen.

While a tree grows, its fed levels sit in committed slots whose positions are not their
slot indices; a sliding-window draft (whose window masks assume slot j holds position j)
then sees a window shifted by at most the tree's size: its proposals may differ slightly,
never the output, which the target verifies on an exact cache.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from paragen.sampling import SamplingParams, warp
from paragen.strategies.base import CountedModel, Strategy, catch_up, feed, prefill_cache
from paragen.tree import TokenTree
from paragen.verify import verify_tree


class TreeDrafter:
    def __init__(self, draft: CountedModel, cache_length: int) -> None:
        self.model = draft
        self.cache = draft.new_cache(cache_length)
        self.base = 0  # committed slots when the current tree was started (the whole sequence)
        self.slot: dict[int, int] = {}  # tree node -> its offset among the slots fed since ``start``

    def prefill(self, seq: list[int]) -> None:
        prefill_cache(self.model, self.cache, seq)

    def start(self, seq: list[int]) -> tuple[TokenTree, torch.Tensor]:
        """A tree rooted at the newest token, and the draft's logits there [V]."""
        logits = catch_up(self.model, self.cache, seq)
        self.base, self.slot = self.cache.length, {}
        return TokenTree(seq[-1]), logits

    def expand(self, tree: TokenTree, nodes: list[int]) -> torch.Tensor:
        """Feed ``nodes`` (whose parents were fed before, or are the root) in one draft call;
        their logits [len(nodes), V]."""
        fed = len(self.slot)
        T, S = len(nodes), self.base + fed + len(nodes)
        mask = torch.zeros(T, S, dtype=torch.bool)
        mask[:, : self.base] = True  # the committed sequence, the root (newest token) included
        for j, node in enumerate(nodes):
            for a in tree.path(node)[:-1]:
                mask[j, self.base + self.slot[a]] = True
            mask[j, self.base + fed + j] = True
        start = self.base - 1  # the root's position
        logits = feed(self.model, self.cache, [tree.tokens[i] for i in nodes], start, mask=mask,
                      positions=[start + tree.depths[i] for i in nodes])
        self.cache.commit(T)  # held until ``accept``: the next level attends to these slots
        for j, node in enumerate(nodes):
            self.slot[node] = fed + j
        return logits

    def renumber(self, new: dict[int, int]) -> None:
        """Follow a pruned tree's node numbering (``TokenTree.subtree``)."""
        self.slot = {new[node]: s for node, s in self.slot.items() if node in new}

    def accept(self, path: list[int]) -> None:
        """Keep the draft slots of the accepted path's nodes that were fed, in order."""
        kept = []
        for node in path:
            if node not in self.slot:
                break  # a leaf never fed: the next catch_up feeds it
            kept.append(self.slot[node])
        self.cache.truncate(self.base)
        self.cache.keep(kept)


class TreeDraftStrategy(Strategy):
    """The loop of a tree-shaped draft-and-verify strategy; subclasses say how deep a step
    drafts (``depth``) and how the tree grows (``grow``), and drafters other than a draft
    model (prediction heads) also how the target's forward feeds them (``score``, ``commit``).

    Stats (``extra``): ``proposed[d]`` / ``accepted[d]``: steps whose tree reached depth
    d + 1, and whose accepted path did; ``nodes``: drafted nodes verified in all.
    """

    needs_draft = True
    rule: ClassVar[str] = "rrs"  # verify_tree's sampling rule

    @abstractmethod
    def depth(self) -> int:
        """Draft levels a step grows at most."""

    @abstractmethod
    def grow(self, depth: int) -> TokenTree:
        """A tree of at most ``depth`` levels from ``self.drafter`` (started on ``self.seq``)."""

    def prefill(self, prompt: list[int]) -> None:
        super().prefill(prompt)
        self.drafter = TreeDrafter(self.ctx.draft, self.ctx.cache_length)
        self.drafter.prefill(self.seq)
        self.ctx.extra.update(proposed=[], accepted=[], nodes=0)

    def draft_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The draft's probabilities [..., V]: warped like the target's when sampling, its own
        softmax (temperature 1) when greedy, where they only rank or diversify candidates."""
        return warp(logits, SamplingParams(1.0) if self.ctx.sampling.greedy else self.ctx.sampling)

    def step(self, budget: int) -> list[int]:
        n = len(self.seq)
        depth = min(self.depth(), budget - 1)
        # 1. propose: a token tree from the draft (none when one token is wanted)
        tree = self.grow(depth) if depth else TokenTree(self.seq[-1])
        # 2. verify: one target forward over the newest token and every node (tree mask)
        logits = self.score(tree, n)
        path, nxt = self.verify(tree, logits)
        # 3. commit: the target's and the drafter's caches keep the accepted path only
        self.commit(path, drafted=depth > 0)
        committed = [*(tree.tokens[i] for i in path), nxt]
        self.seq.extend(committed)
        self.record(tree, logits, path)
        return committed

    def score(self, tree: TokenTree, n: int) -> torch.Tensor:
        """The target's logits at every node [N, V], in one forward after the committed ``n - 1``."""
        return feed(self.ctx.target, self.cache, tree.tokens, n - 1, mask=tree.mask(), positions=tree.positions(n - 1))

    def verify(self, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
        """(accepted path, next token): ``verify_tree`` with this strategy's sampling rule."""
        return verify_tree(tree, logits, self.ctx.sampling, self.ctx.generator, rule=self.rule)

    def commit(self, path: list[int], drafted: bool) -> None:
        self.cache.keep([0, *path])
        if drafted:  # the drafter started a tree this step
            self.drafter.accept(path)

    def record(self, tree: TokenTree, logits: torch.Tensor, path: list[int]) -> None:
        record_tree(self.ctx.extra, tree, path)


def record_tree(extra: dict, tree: TokenTree, path: list[int]) -> None:
    """Count one verified tree into a row's stats: depths reached and accepted, nodes drafted."""
    for key in ("proposed", "accepted"):
        extra[key] += [0] * (tree.depth - len(extra[key]))
    for d in range(tree.depth):
        extra["proposed"][d] += 1
        extra["accepted"][d] += int(d < len(path))
    extra["nodes"] += len(tree) - 1
