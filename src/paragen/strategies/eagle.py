"""``eagle``: a feature-level drafter on the target's own hidden states (EAGLE, Li et al. 2024;
EAGLE-2's dynamic tree).

The drafter (``paragen.heads.modules.Eagle``) is one decoder layer whose input at position
t is the target's final-norm hidden state h_t fused with the embedding of x_{t+1}; it
predicts the feature of t + 1, which the target's own output projection reads out as
x_{t+2}. To draft further it feeds its predicted feature back with the drafted token.
Its KV cache holds one entry per committed position, always from the target's true
features: the verifying forward returns them (``return_hidden``) for the accepted path,
and the next step feeds them before drafting, so each step is one target call.

The tree is grown as ``tree`` grows it (``grow_static`` / ``grow_dynamic``: static
widths, or EAGLE-2's best-first tree under a node budget from the drafter's confidences)
with this drafter in place of a draft model, and verified by ``verify_tree``: lossless,
greedy and sampling. Options are ``tree``'s. In a batch each row has its own drafter and
drafter cache (``TreeDraftStrategy``), prefilled with its prompt's true features.
"""

from __future__ import annotations

import torch

from paragen.strategies.counts import new_counts
from paragen.strategies.drafter import CachedDrafter, TreeRow
from paragen.strategies.tree import Tree
from paragen.tree import TokenTree


class EagleDrafter(CachedDrafter):
    """The eagle heads as a drafter: a cache entry per position t holds (h_t, x_{t+1}); a
    drafted node is fed its parent's predicted feature with its own token."""

    def __init__(self, heads, cache_length: int, pending: torch.Tensor) -> None:
        super().__init__(heads.new_cache(cache_length))
        self.heads = heads
        self.pending = pending  # true features [m, H] of the positions the cache lacks, up to seq[-2]'s
        self.feat: dict[int, torch.Tensor] = {}  # tree node -> predicted feature at its position [H] (this tree's)

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

    def forward(self, tree: TokenTree, nodes: list[int], mask: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """Feed ``nodes`` with their parents' predicted features; keep their own for their children."""
        features = torch.stack([self.feat[tree.parents[i]] for i in nodes])[None]
        dev = features.device  # the tree's bookkeeping is on the host; the drafter's inputs go to its device
        tokens = torch.tensor([[tree.tokens[i] for i in nodes]], device=dev)
        out = self.heads(features, tokens, torch.tensor([positions], device=dev), cache=self.cache,
                         mask=mask[None].to(dev))[0]
        for j, node in enumerate(nodes):
            self.feat[node] = out[j]
        return self.heads.readout(out)

    def accept(self, path: list[int], states: torch.Tensor | None) -> None:
        """Drop the drafted entries; queue the target's true features of the newly committed
        positions (the root and the accepted path), drafted or not."""
        if self.base is not None:
            self.cache.truncate(self.base)
            self.base = None
        self.queue(states[[0, *path]])

    def queue(self, states: torch.Tensor) -> None:
        """True features [a, H] of newly committed positions, fed by the next ``start``."""
        self.pending = torch.cat([self.pending, states])


class Eagle(Tree):
    name = "eagle"
    trace_source = "eagle"
    needs_draft = False
    head_kinds = ("eagle",)
    summary = "EAGLE drafter on the target's hidden states grows a token tree, target verifies it in one call"
    reads_hidden = True  # each row's drafter is prefilled with its prompt's true features, then fed each path's

    def new_row(self, b: int, states: torch.Tensor | None) -> TreeRow:
        n = len(self.rows[b].seq) - 1  # features of seq[:-1]; none for a one-token prompt
        heads = self.ctx.heads
        pending = states[b, :n] if n else heads.proj.new_zeros(0, heads.proj.shape[1])
        return TreeRow(new_counts(), EagleDrafter(heads, self.ctx.cache_length, pending))
