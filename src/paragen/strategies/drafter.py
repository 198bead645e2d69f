"""Token-tree draft-and-verify: the drafters, the two ways a tree grows from one, and the
batched loop every tree strategy shares (``TreeDraftStrategy``: ``tree``, ``spectr``,
``medusa``, ``hydra``, ``eagle``).

A drafter proposes the children of a tree's nodes level by level: ``start(seq)`` gives the
tree rooted at the newest token and the logits there, ``expand(tree, nodes)`` the logits at
a level's nodes. ``grow_static`` (fixed widths per depth) and ``grow_dynamic`` (the best
nodes under a budget) build a tree from any drafter: a draft model (``ModelDrafter``), the
EAGLE drafter (``paragen.strategies.eagle``) or prediction heads (``paragen.strategies.medusa``).

A drafter with a cache of its own (``CachedDrafter``: the draft model, EAGLE) makes one call
per level: the nodes to expand are fed together, each seeing the committed sequence, its
own ancestors among the nodes fed before, and itself. Those slots stay in its cache until
verification; then ``accept`` keeps what the next step needs (the draft model: the accepted
path's slots, ``keep``) and drops the rest, so the next ``start`` feeds only what it has not seen.

While a tree grows, its fed levels sit in committed slots whose positions are not their
slot indices; a sliding-window draft (whose window masks assume slot j holds position j)
then sees a window shifted by at most the tree's size: its proposals may differ slightly,
never the output, which the target verifies on an exact cache.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from paragen.sampling import SamplingParams, warp
from paragen.strategies.base import BatchedStrategy, CountedModel, OwnRow, catch_up, feed, pad, prefill_cache, to_device
from paragen.strategies.counts import new_counts
from paragen.trace import Call, probs_of
from paragen.tree import TokenTree
from paragen.verify import verify_tree


class Drafter(Protocol):
    """What a tree grows from: a draft model or EAGLE (``CachedDrafter``), prediction heads."""

    def start(self, seq: list[int]) -> tuple[TokenTree, torch.Tensor]:
        """A tree rooted at ``seq[-1]``, and the drafter's logits there [V]."""

    def expand(self, tree: TokenTree, nodes: list[int]) -> torch.Tensor:
        """The logits [len(nodes), V] at ``nodes``: one level, whose parents were expanded
        before (or are the root)."""


class CachedDrafter(ABC):
    """A drafter with a cache of its own, fed one call per level (see the module docstring).
    Subclasses say how a tree starts (``start``), how a level is fed (``forward``) and what
    their cache keeps after verification (``accept``)."""

    ready = True  # whether ``start`` can run (EAGLE's drafter needs a feature first)

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.base: int | None = None  # committed slots when the current tree started; None between trees
        self.slot: dict[int, int] = {}  # tree node -> its offset among the slots fed since ``start``

    @abstractmethod
    def start(self, seq: list[int]) -> tuple[TokenTree, torch.Tensor]:
        """Catch up on the committed tokens; set ``base`` and clear ``slot``; the tree and logits at its root."""

    @abstractmethod
    def forward(self, tree: TokenTree, nodes: list[int], mask: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """One call over ``nodes`` after the cache's committed slots, with their attention
        ``mask`` [T, S] over those slots and themselves (on the host) and their ``positions``: logits [T, V]."""

    @abstractmethod
    def accept(self, path: list[int], states: torch.Tensor | None) -> None:
        """After verification: ``path`` the accepted nodes, ``states`` [N, H] the target's hidden
        states at every node of the tree (None unless the strategy reads them)."""

    def expand(self, tree: TokenTree, nodes: list[int]) -> torch.Tensor:
        fed = len(self.slot)
        T, S = len(nodes), self.base + fed + len(nodes)
        mask = torch.zeros(T, S, dtype=torch.bool)
        mask[:, : self.base] = True  # the committed sequence, the root (newest token) included
        for j, node in enumerate(nodes):
            for a in tree.path(node)[:-1]:
                mask[j, self.base + self.slot[a]] = True
            mask[j, self.base + fed + j] = True
        # the root, the newest token, sits at position base - 1; a node at depth e at base - 1 + e
        logits = self.forward(tree, nodes, mask, [self.base - 1 + tree.depths[i] for i in nodes])
        self.cache.commit(T)  # held until ``accept``: the next level attends to these slots
        for j, node in enumerate(nodes):
            self.slot[node] = fed + j
        return logits

    def renumber(self, new: dict[int, int]) -> None:
        """Follow a pruned tree's node numbering (``TokenTree.subtree``)."""
        self.slot = {new[node]: s for node, s in self.slot.items() if node in new}


class ModelDrafter(CachedDrafter):
    """A draft model with a cache of its own, prefilled with the row's prompt."""

    def __init__(self, draft: CountedModel, cache_length: int, prompt: list[int]) -> None:
        super().__init__(draft.new_cache(cache_length))
        self.model = draft
        prefill_cache(draft, self.cache, prompt)

    def start(self, seq: list[int]) -> tuple[TokenTree, torch.Tensor]:
        logits = catch_up(self.model, self.cache, seq)
        self.base, self.slot = self.cache.length, {}
        return TokenTree(seq[-1]), logits

    def forward(self, tree: TokenTree, nodes: list[int], mask: torch.Tensor, positions: list[int]) -> torch.Tensor:
        return feed(self.model, self.cache, [tree.tokens[i] for i in nodes], positions[0], mask=mask, positions=positions)

    def accept(self, path: list[int], states: torch.Tensor | None) -> None:
        """Keep the slots of the accepted path's nodes that were fed, in order (a leaf never fed
        is fed by the next ``start``)."""
        if self.base is None:
            return  # no tree this step (the row wanted one token): nothing was fed
        kept = []
        for node in path:
            if node not in self.slot:
                break
            kept.append(self.slot[node])
        self.cache.truncate(self.base)
        self.cache.keep(kept)
        self.base = None


def grow_static(drafter: Drafter, seq: list[int], widths: Sequence[int], sampling: SamplingParams, draw: str,
                generator: torch.Generator) -> TokenTree:
    """A tree whose nodes at depth d all get ``widths[d]`` children (Medusa / SpecInfer style),
    one drafter call per level. The drafter's logits are warped with ``sampling``; ``draw``:
    "top" takes the top-w as deterministic candidates (q = None: a node accepts Y ~ p iff Y was
    drafted), "without" / "with" draws w children without replacement / i.i.d. and records q
    for recursive rejection (which renormalises q after each rejected child without replacement)."""
    tree, logits = drafter.start(seq)
    level, logits = [0], logits[None]
    for d, w in enumerate(widths):
        for node, q in zip(level, warp(logits, sampling)):
            support = int((q > 0).sum())
            if draw == "top":
                draws = q.topk(min(w, support)).indices
            else:
                draws = torch.multinomial(q, w if draw == "with" else min(w, support),
                                          replacement=draw == "with", generator=generator)
                tree.q[node] = q
            for t in draws.tolist():
                tree.add(node, t)
        level = tree.level(d + 1)
        if d + 1 < len(widths):
            logits = drafter.expand(tree, level)
    tree.replacement = draw == "with"
    return tree


def grow_dynamic(drafter: CachedDrafter, seq: list[int], depth: int, topk: int, budget: int,
                 sampling: SamplingParams) -> TokenTree:
    """OPT-Tree / EAGLE-2's tree: at each of ``depth`` levels expand the ``topk`` nodes with the
    highest path product of draft probabilities (warped with ``sampling``), each into its
    ``topk`` most likely children; then keep the ``budget`` best nodes overall. A node's score
    never exceeds its parent's, so the best nodes form a tree. Candidates are deterministic (q = None)."""
    tree, logits = drafter.start(seq)
    score = {0: 0.0}  # log of the path product of draft probabilities
    frontier, logits = [0], logits[None]
    for d in range(depth):
        new = []
        for node, q in zip(frontier, warp(logits, sampling)):
            top = q.topk(min(topk, int((q > 0).sum())))
            for pr, t in zip(top.values.log().tolist(), top.indices.tolist()):
                child = tree.add(node, t)
                score[child] = score[node] + pr
                new.append(child)
        if d + 1 == depth:
            break
        frontier = sorted(new, key=lambda i: -score[i])[:topk]
        logits = drafter.expand(tree, frontier)
    # Ties broken by index keep a parent (equal score, smaller index) before its child.
    best = sorted(score.keys() - {0}, key=lambda i: (-score[i], i))[:budget]
    tree, new = tree.subtree(best)
    drafter.renumber(new)
    return tree


@dataclass
class TreeRow(OwnRow):
    drafter: CachedDrafter | None = None  # the row's drafter with a cache (none for heads: they read ``hidden``)


class TreeDraftStrategy(BatchedStrategy):
    """The batched loop of the tree-shaped draft-and-verify strategies: ``propose`` a tree per
    row; the rows' trees are padded to one size and scored in one target forward
    (``KVCache.tree_mask``: a row sees its committed slots and its own tree; a pad node sees
    only itself and is never read); ``verify`` walks each row's tree; each row keeps its own
    path (``KVCache.keep_rows``) and its drafter follows (``CachedDrafter.accept``). A batch of
    one is the same loop. A row's drafter is a draft model by default (``new_row``); drafters
    on the target's states (heads, EAGLE) set ``reads_hidden``: ``hidden`` at each row's last
    accepted node, ``kept_states`` along its path, and the tree's states for ``accept``.

    Stats (``own[b].stats``): ``proposed[d]`` / ``accepted[d]``: steps whose tree reached depth
    d + 1, and whose accepted path did; ``nodes``: drafted nodes verified in all.
    """

    needs_draft = True
    trace_source = "draft"

    def new_row(self, b: int, states: torch.Tensor | None) -> TreeRow:
        return TreeRow(new_counts(), ModelDrafter(self.ctx.draft, self.ctx.cache_length, self.rows[b].seq))

    @abstractmethod
    def propose(self, budgets: list[int]) -> list[TokenTree]:
        """Each row's tree, at most ``budgets[b] - 1`` levels deep (``trees``)."""

    def trees(self, depths: list[int], grow: Callable[[int, int], TokenTree]) -> list[TokenTree]:
        """``grow(b, depths[b])`` for each row that drafts; the bare root (its newest token) for
        a row that drafts nothing, whose drafter is not called."""
        return [grow(b, d) if d else TokenTree(row.seq[-1]) for b, (row, d) in enumerate(zip(self.rows, depths))]

    def verify(self, b: int, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
        """(accepted path, next token) of row ``b``: ``verify_tree`` (lossless)."""
        return verify_tree(tree, logits, self.ctx.sampling, self.rows[b].generator)

    def draft_sampling(self) -> SamplingParams:
        """How a drafter's logits are warped: like the target's when sampling, its own softmax
        (temperature 1) when greedy, where they only rank or diversify candidates."""
        return SamplingParams(1.0) if self.ctx.sampling.greedy else self.ctx.sampling

    def step_rows(self, budgets: list[int]) -> list[list[int]]:
        # 1. propose: a tree per row (the bare root for a row that wants one token)
        trees = self.propose(budgets)
        if self.ctx.trace:
            self.ctx.trace.lap("draft")
        # 2. verify: one target forward over every row's newest token and tree
        logits, states = self.score(trees)
        paths, committed = [], []
        for b, tree in enumerate(trees):
            path, nxt = self.verify(b, tree, logits[b, : len(tree)])
            paths.append(path)
            committed.append([*(tree.tokens[i] for i in path), nxt])
        self.count([t.depth for t in trees], [len(p) for p in paths], [len(t) - 1 for t in trees])
        if self.ctx.trace:
            self.ctx.trace.lap("verify")
            for b, tree in enumerate(trees):
                self.trace_tree(b, tree, logits[b, : len(tree)], paths[b], committed[b][-1])
        # 3. commit: the target's cache keeps each row's accepted path, the drafters follow
        kept = [[0, *p] for p in paths]
        self.cache.keep_rows(kept)
        if self.reads_hidden:  # the state at each row's last accepted node predicted its next token
            self.hidden = states[torch.arange(len(kept), device=states.device), to_device([k[-1] for k in kept], states.device)]
            for row in self.rows:
                row.ready = True
            self.kept_states = (states, kept)
        for b, (own, path) in enumerate(zip(self.own, paths)):
            if own.drafter is not None:
                own.drafter.accept(path, None if states is None else states[b])
        for row, c in zip(self.rows, committed):
            row.seq.extend(c)
        return committed

    def score(self, trees: list[TokenTree]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The target's logits at every node of every row's tree [B, N, V] (N: the largest
        tree) in one forward, and with ``reads_hidden`` the hidden states there [B, N, H]."""
        B, N, device = len(trees), max(map(len, trees)), self.ctx.target.device
        shapes = torch.eye(N, dtype=torch.bool).repeat(B, 1, 1)  # a pad node sees only itself
        for b, tree in enumerate(trees):
            shapes[b, : len(tree), : len(tree)] = tree.mask()
        starts = [len(s) - 1 for s in self.seqs]  # each root's position
        tokens = pad([t.tokens for t in trees], device)
        positions = pad([t.positions(n) + [n] * (N - len(t)) for t, n in zip(trees, starts)], device)
        out = self.ctx.target(tokens, positions, cache=self.cache, mask=self.cache.tree_mask(shapes),
                              return_hidden=self.reads_hidden)
        return out if self.reads_hidden else (out, None)

    def trace_tree(self, row: int, tree: TokenTree, logits: torch.Tensor, path: list[int], nxt: int) -> None:
        """Record row ``row``'s tree (tracing only), root excluded (node i is the trace's i - 1):
        each node's probability under its parent's target logits [N, V], and under the draft
        distribution its parent's children were drawn from, where there was one."""
        sampling = self.ctx.sampling
        p = logits.float().softmax(-1) if sampling.greedy else warp(logits, sampling)
        nodes = range(1, len(tree))
        parents = [tree.parents[i] for i in nodes]
        tokens = tree.tokens[1:]
        q = [float(tree.q[par][t]) if tree.q[par] is not None else None for par, t in zip(parents, tokens)]
        self.ctx.trace.call(row, Call(
            "tree", self.trace_source, tokens, [par - 1 for par in parents], [i - 1 for i in path],
            probs_of(p[parents], tokens), q if any(x is not None for x in q) else None,
            float(p[path[-1] if path else 0, nxt])))
