"""``hydra``: Medusa's token tree with sequentially dependent heads (Ankner et al. 2024).

Hydra head d reads the embeddings of the tokens before the one it drafts (the newest
committed token, then the path's drafted tokens), so each node's children depend on its
path: the tree is grown level by level, one batched heads call per level (no target
call). Widths, sampling (``draw``), verification and the one-target-call step are
``medusa``'s. A chain draft is ``widths="1,1,1"``. Lossless, greedy and sampling.
"""

from __future__ import annotations

import torch

from paragen.strategies.drafter import Drafter
from paragen.strategies.medusa import Medusa
from paragen.tree import TokenTree


class HydraDrafter:
    """One row's Hydra heads as a drafter: head d reads the row's state and the tokens of a
    depth-d node's path (the root's token first), one heads call per level."""

    def __init__(self, heads, hidden: torch.Tensor) -> None:
        self.heads, self.hidden = heads, hidden  # the row's state [H]

    def start(self, seq: list[int]) -> tuple[TokenTree, torch.Tensor]:
        tree = TokenTree(seq[-1])
        return tree, self.expand(tree, [0])[0]

    def expand(self, tree: TokenTree, nodes: list[int]) -> torch.Tensor:
        prev = torch.tensor([[tree.tokens[0], *(tree.tokens[i] for i in tree.path(node))] for node in nodes],
                            device=self.hidden.device)
        return self.heads.head(tree.depths[nodes[0]], self.hidden.expand(len(nodes), -1), prev)


class Hydra(Medusa):
    name = "hydra"
    head_kinds = ("hydra",)
    summary = "sequential prediction heads grow a token tree, target verifies it in one call"

    def drafters(self) -> list[Drafter]:
        """Hydra's heads read each node's path, so each row's are called level by level instead."""
        return [HydraDrafter(self.ctx.heads, h) for h in self.hidden]
