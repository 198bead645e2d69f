"""Token-tree draft-and-verify: the batched loop (``TreeDraftStrategy``), and a draft model
growing a token tree level by level with its cache kept in step (``TreeDrafter``).

The loop is shared by every tree strategy (``tree``, ``spectr``, ``medusa``, ``hydra``,
``eagle``); the drafter by those on a draft model (``tree``, ``spectr``). One draft
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
from typing import Any, ClassVar

import torch

from paragen.sampling import SamplingParams, warp
from paragen.strategies.base import BatchedStrategy, CountedModel, catch_up, feed, pad, prefill_cache, to_device
from paragen.strategies.counts import count_step, new_counts
from paragen.trace import Call, probs_of
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


class TreeDraftStrategy(BatchedStrategy):
    """The batched loop of the tree-shaped draft-and-verify strategies. Each row grows its
    own tree (``grow``) from its own drafter (``drafters[row]``, a ``TreeDrafter`` on the draft
    model by default, with a cache of its own); the rows' trees are padded to one size and
    scored in one target forward (``KVCache.tree_mask``: a row sees its committed slots and
    its own tree; a pad node sees only itself and is never read); ``verify`` walks each row's
    tree; each row keeps its own path (``KVCache.keep_rows``) and its drafter follows
    (``commit``). A batch of one is the same loop. Subclasses say how deep a row drafts
    (``depth``) and how its tree grows (``grow``); drafters other than a draft model
    (prediction heads) read the verifying forward's states (``reads_hidden``: ``hidden`` at
    each row's last accepted node, ``kept_states`` along its path) and follow in ``commit``.

    Stats (``extras[row]``): ``proposed[d]`` / ``accepted[d]``: steps whose tree reached depth
    d + 1, and whose accepted path did; ``nodes``: drafted nodes verified in all.
    """

    needs_draft = True
    trace_source = "draft"
    rule: ClassVar[str] = "rrs"  # verify_tree's sampling rule
    row_lists = (*BatchedStrategy.row_lists, "drafters")

    @abstractmethod
    def depth(self, row: int) -> int:
        """Draft levels row ``row`` grows at most this step."""

    @abstractmethod
    def grow(self, row: int, depth: int) -> TokenTree:
        """Row ``row``'s tree of at most ``depth`` levels from ``drafters[row]`` (started on ``seqs[row]``)."""

    def prepare_rows(self, states: torch.Tensor | None) -> None:
        super().prepare_rows(states)
        self.drafters = [self.new_drafter(row, states) for row in range(len(self.seqs))]

    def new_drafter(self, row: int, states: torch.Tensor | None):
        """Row ``row``'s drafter, prefilled with its prompt (``states``: the prompts' hidden states, if read)."""
        drafter = TreeDrafter(self.ctx.draft, self.ctx.cache_length)
        drafter.prefill(self.seqs[row])
        return drafter

    def new_extra(self) -> dict[str, Any]:
        return new_counts()

    def draft_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The draft's probabilities [..., V]: warped like the target's when sampling, its own
        softmax (temperature 1) when greedy, where they only rank or diversify candidates."""
        return warp(logits, SamplingParams(1.0) if self.ctx.sampling.greedy else self.ctx.sampling)

    def before_grow(self) -> None:
        """Called once per step before any row's tree grows (heads read every row's state at once)."""

    def step_rows(self, budgets: list[int]) -> list[list[int]]:
        # 1. propose: a tree per row (none for a row that wants one token)
        depths = [min(self.depth(b), budget - 1) for b, budget in enumerate(budgets)]
        if max(depths):
            self.before_grow()
        trees = [self.grow(b, d) if d else TokenTree(self.seqs[b][-1]) for b, d in enumerate(depths)]
        if self.ctx.trace:
            self.ctx.trace.lap("draft")
        # 2. verify: one target forward over every row's newest token and tree
        logits, states = self.score(trees)
        paths, committed = [], []
        for b, tree in enumerate(trees):
            path, nxt = self.verify(b, tree, logits[b, : len(tree)])
            paths.append(path)
            committed.append([*(tree.tokens[i] for i in path), nxt])
            self.record(b, tree, logits[b, : len(tree)], path)
        if self.ctx.trace:
            self.ctx.trace.lap("verify")
            for b, tree in enumerate(trees):
                self.trace_tree(b, tree, logits[b, : len(tree)], paths[b], committed[b][-1])
        # 3. commit: the target's cache keeps each row's accepted path, the drafters follow
        kept = [[0, *p] for p in paths]
        self.cache.keep_rows(kept)
        if self.reads_hidden:  # the state at each row's last accepted node predicted its next token
            self.hidden = states[torch.arange(len(kept), device=states.device), to_device([k[-1] for k in kept], states.device)]
            self.ready = [True] * len(kept)
            self.kept_states = (states, kept)
        self.commit(paths, depths, states)
        for seq, c in zip(self.seqs, committed):
            seq.extend(c)
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

    def verify(self, row: int, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
        """(accepted path, next token) of row ``row``: ``verify_tree`` with this strategy's sampling rule."""
        return verify_tree(tree, logits, self.ctx.sampling, self.generators[row], rule=self.rule)

    def commit(self, paths: list[list[int]], depths: list[int], states: torch.Tensor | None) -> None:
        """After the target kept each row's path: a drafter that started a tree keeps its path too."""
        for drafter, path, depth in zip(self.drafters, paths, depths):
            if depth:
                drafter.accept(path)

    def record(self, row: int, tree: TokenTree, logits: torch.Tensor, path: list[int]) -> None:
        """Count one verified tree into its row's stats: depths reached and accepted, nodes drafted."""
        count_step(self.extras[row], tree.depth, len(path), len(tree) - 1)

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
