"""``hydra``: Medusa's token tree with sequentially dependent heads (Ankner et al. 2024).

Hydra head d reads the embeddings of the tokens before the one it drafts (the newest
committed token, then the path's drafted tokens), so each node's children depend on its
path: the tree is grown level by level, one batched heads call per level (no target
call). Widths, sampling (``draw``), verification and the one-target-call step are
``medusa``'s. A chain draft is ``widths="1,1,1"``. Lossless, greedy and sampling.
"""

from __future__ import annotations

import torch

from paragen.strategies.medusa import Medusa
from paragen.tree import TokenTree


class Hydra(Medusa):
    name = "hydra"
    head_kinds = ("hydra",)
    summary = "sequential prediction heads grow a token tree, target verifies it in one call"

    def before_grow(self) -> None:
        """Hydra's heads read each node's path, so they are called level by level instead."""

    def child_logits(self, row: int, tree: TokenTree, level: list[int], depth: int) -> torch.Tensor:
        """Head ``depth``'s logits [len(level), V] for each of row ``row``'s nodes, given the tokens of its path."""
        prev = torch.tensor([[tree.tokens[0], *(tree.tokens[i] for i in tree.path(node))] for node in level],
                            device=self.hidden.device)
        return self.ctx.heads.head(depth, self.hidden[row].expand(len(level), -1), prev)
