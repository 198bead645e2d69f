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

import torch

from paragen.strategies.base import CountedModel, catch_up, feed, prefill_cache
from paragen.tree import TokenTree


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
