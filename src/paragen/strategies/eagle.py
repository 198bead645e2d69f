"""``eagle``: a feature-level drafter on the target's own hidden states (EAGLE, Li et al. 2024;
EAGLE-2's dynamic tree).

The drafter (``paragen.heads.modules.Eagle``) is one decoder layer whose input at position
t is the target's final-norm hidden state h_t fused with the embedding of x_{t+1}; it
predicts the feature of t + 1, which the target's own output projection reads out as
x_{t+2}. To draft further it feeds its predicted feature back with the drafted token.
Its KV cache holds one entry per committed position, always from the target's true
features: the verifying forward returns them (``return_hidden``) for the accepted path,
and the next step feeds them before drafting, so each step is one target call.

The tree is grown by ``tree``'s code (``Tree.grow_static`` / ``grow_dynamic``: static
widths, or EAGLE-2's best-first tree under a node budget from the drafter's confidences)
with this drafter in place of a draft model, and verified by ``verify_tree``: lossless,
greedy and sampling. Options are ``tree``'s. In a batch each row has its own drafter and
drafter cache (``TreeDraftStrategy``), prefilled with its prompt's true features.
"""

from __future__ import annotations

import torch

from paragen.strategies.tree import Tree
from paragen.tree import TokenTree


class EagleDrafter:
    """``TreeDrafter``'s interface over the eagle heads: start / expand / renumber / accept."""

    def __init__(self, heads, cache_length: int, pending: torch.Tensor) -> None:
        self.heads = heads
        self.cache = heads.new_cache(cache_length)  # entry t: (h_t, x_{t+1}) at position t
        self.pending = pending  # true features [m, H] of the positions the cache lacks, up to seq[-2]'s
        self.base = 0
        self.slot: dict[int, int] = {}  # tree node -> its offset among the entries fed since ``start``
        self.feat: dict[int, torch.Tensor] = {}  # tree node -> predicted feature at its position [H]

    @property
    def ready(self) -> bool:
        """Whether the newest token's entry can be fed (a one-token prompt has no feature yet)."""
        return len(self.pending) > 0

    def start(self, seq: list[int]) -> tuple[TokenTree, torch.Tensor]:
        """Feed the pending true features; the tree at ``seq[-1]`` and the drafter's logits there [V]."""
        m, start = len(self.pending), len(seq) - 1 - len(self.pending)  # positions start .. len(seq) - 2
        dev = self.pending.device
        tokens = torch.tensor([seq[start + 1 :]], device=dev)
        out = self.heads(self.pending[None], tokens, torch.arange(start, start + m, device=dev)[None], cache=self.cache)[0]
        self.cache.commit(m)
        self.base, self.slot, self.feat = self.cache.length, {}, {0: out[-1]}
        self.pending = out[:0]
        return TokenTree(seq[-1]), self.heads.readout(out[-1])

    def expand(self, tree: TokenTree, nodes: list[int]) -> torch.Tensor:
        """Feed ``nodes`` (parents fed before, or the root) with their parents' predicted features;
        their logits [len(nodes), V]. Node at depth e sits at position base - 1 + e."""
        fed = len(self.slot)
        T, S = len(nodes), self.base + fed + len(nodes)
        mask = torch.zeros(T, S, dtype=torch.bool)
        mask[:, : self.base] = True  # every committed entry, the newest token's included
        for j, node in enumerate(nodes):
            for a in tree.path(node)[:-1]:
                mask[j, self.base + self.slot[a]] = True
            mask[j, self.base + fed + j] = True
        features = torch.stack([self.feat[tree.parents[i]] for i in nodes])[None]
        dev = features.device  # the tree's bookkeeping is on the host; the drafter's inputs go to its device
        positions = torch.tensor([[self.base - 1 + tree.depths[i] for i in nodes]], device=dev)
        tokens = torch.tensor([[tree.tokens[i] for i in nodes]], device=dev)
        out = self.heads(features, tokens, positions, cache=self.cache, mask=mask[None].to(dev))[0]
        self.cache.commit(T)  # held until ``accept``: the next level attends to these entries
        for j, node in enumerate(nodes):
            self.slot[node], self.feat[node] = fed + j, out[j]
        return self.heads.readout(out)

    def renumber(self, new: dict[int, int]) -> None:
        """Follow a pruned tree's node numbering (``TokenTree.subtree``)."""
        self.slot = {new[n]: s for n, s in self.slot.items() if n in new}
        self.feat = {new[n]: f for n, f in self.feat.items() if n in new}

    def accept(self, hidden: torch.Tensor) -> None:
        """Drop the drafted entries; queue the target's true features of the newly committed
        positions (the root and the accepted path) [a + 1, H], fed by the next ``start``."""
        self.cache.truncate(self.base)
        self.pending = torch.cat([self.pending, hidden])


class Eagle(Tree):
    name = "eagle"
    trace_source = "eagle"
    needs_draft = False
    head_kinds = ("eagle",)
    summary = "EAGLE drafter on the target's hidden states grows a token tree, target verifies it in one call"
    reads_hidden = True  # each row's drafter is prefilled with its prompt's true features, then fed each path's

    def new_drafter(self, row: int, states: torch.Tensor | None) -> EagleDrafter:
        n = len(self.seqs[row]) - 1  # features of seq[:-1]; none for a one-token prompt
        heads = self.ctx.heads
        pending = states[row, :n] if n else heads.proj.new_zeros(0, heads.proj.shape[1])
        return EagleDrafter(heads, self.ctx.cache_length, pending)

    def depth(self, row: int) -> int:
        return super().depth(row) if self.drafters[row].ready else 0  # a one-token prompt has no feature yet

    def commit(self, paths: list[list[int]], depths: list[int], states: torch.Tensor | None) -> None:
        # Each drafter gets the target's true features along its accepted path, drafted or not.
        for b, (drafter, path) in enumerate(zip(self.drafters, paths)):
            drafter.accept(states[b, [0, *path]])
