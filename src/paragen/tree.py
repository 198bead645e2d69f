"""Token trees as data: drafted candidates that share prefixes, verified in one forward.

Node 0 is the root: the newest committed token, whose logits score the first drafted
level. Every other node is a drafted token with a parent of smaller index, so the node
order is a valid feeding order and ``tokens`` can be fed to a model as one sequence:

    tokens     the node tokens, root first                      [N]
    positions  committed length - 1 + depth (siblings share one) [N]
    mask()     ancestor-or-self attention over the N new tokens  [N, N]
    path(i)    the node indices from the root's child down to i

With that mask and those positions, node i's logits equal those of feeding its
root-to-node path as a plain chain (SpecInfer, Miao et al. 2024, "tree attention"; a
property test checks it on both backends). After verification ``cache.keep([0, *path])``
(``keep_rows`` in a batch) compacts the accepted path so the cache stays position-addressed.

Each node also records how its children were drafted, for the sampling verifiers:
``cands[i]`` the drafted tokens in draw order (repeats kept: i.i.d. drafts may repeat a
token, which is one child node but one more try for the verifier), and ``q[i]`` the draft
distribution they were drawn from (``None`` when the candidates were chosen
deterministically, e.g. the draft's top-w).
"""

from __future__ import annotations

import torch


class TokenTree:
    """A rooted tree of tokens; children are unique per (parent, token)."""

    def __init__(self, root: int) -> None:
        self.tokens: list[int] = [root]
        self.parents: list[int] = [-1]
        self.depths: list[int] = [0]
        self.kids: list[dict[int, int]] = [{}]  # token -> child index
        self.cands: list[list[int]] = [[]]
        self.q: list[torch.Tensor | None] = [None]
        self.replacement = True  # how sampled candidates were drawn (see verify.recursive_rejection)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, parent: int, token: int) -> int:
        """Record ``token`` as a drafted candidate of ``parent``; return its child node (new or existing)."""
        self.cands[parent].append(token)
        child = self.kids[parent].get(token)
        if child is None:
            child = len(self.tokens)
            self.tokens.append(token)
            self.parents.append(parent)
            self.depths.append(self.depths[parent] + 1)
            self.kids.append({})
            self.cands.append([])
            self.q.append(None)
            self.kids[parent][token] = child
        return child

    def child(self, node: int, token: int) -> int | None:
        return self.kids[node].get(token)

    def positions(self, start: int) -> list[int]:
        """RoPE positions when the root sits at ``start``: siblings share their depth."""
        return [start + d for d in self.depths]

    def mask(self) -> torch.Tensor:
        """Bool [N, N]: node i attends to j iff j is i or one of its ancestors."""
        N = len(self.tokens)
        m = torch.zeros(N, N, dtype=torch.bool)
        for i, parent in enumerate(self.parents):
            if parent >= 0:
                m[i] = m[parent]  # parents come first, so their rows are complete
            m[i, i] = True
        return m

    def path(self, node: int) -> list[int]:
        """Node indices from depth 1 down to ``node`` (the root excluded)."""
        out = []
        while node > 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]

    def level(self, depth: int) -> list[int]:
        return [i for i, d in enumerate(self.depths) if d == depth]

    @property
    def depth(self) -> int:
        return max(self.depths)

    def subtree(self, keep: list[int]) -> tuple[TokenTree, dict[int, int]]:
        """The tree restricted to ``keep`` (root and every kept node's ancestors included, or
        an error), with the map old index -> new index. Drafting records are kept."""
        keep_set = {0, *keep}
        out, new = TokenTree(self.tokens[0]), {0: 0}
        out.replacement = self.replacement
        for i in sorted(keep_set - {0}):
            parent = self.parents[i]
            if parent not in keep_set:
                raise ValueError(f"node {i} is kept without its parent {parent}")
            new[i] = out.add(new[parent], self.tokens[i])
        for i, j in new.items():
            out.q[j] = self.q[i]
            out.cands[j] = [t for t in self.cands[i] if self.kids[i][t] in keep_set]
        return out, new
