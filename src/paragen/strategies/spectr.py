"""``spectr``: multi-draft speculative decoding (SpecTr, Sun et al. 2023, "SpecTr: Fast
Speculative Decoding via Optimal Transport").

Each step the draft samples ``k`` sequences of ``length`` tokens, merged into a token tree
where their prefixes coincide: a node that ``m`` drafts pass through gets ``m`` children
drawn from the draft at that node (i.i.d., or without replacement), which is exactly how
``m`` independent continuations of that prefix are distributed. One target forward scores
every node, and ``verify_tree`` walks the tree depth by depth: at each node the drafts
that still match the accepted prefix are the candidates, and the node's token is chosen
by K-SEQ (the paper's Alg. 2, a (1 - 1/e)-optimal transport plan between the k drafts and
the target) or by recursive rejection (SpecInfer), so the two can be compared on the same
drafts. Both give exactly the target's distribution; greedy decoding follows the target's
argmax (the drafts are then sampled from the draft's own distribution, for diversity).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.errors import UnsupportedOptionError
from paragen.sampling import SamplingParams, warp
from paragen.strategies.base import Strategy, feed
from paragen.strategies.drafter import TreeDrafter
from paragen.strategies.tree import record_tree
from paragen.tree import TokenTree
from paragen.verify import verify_tree


@dataclass(frozen=True)
class SpecTrOptions:
    """Settings of ``spectr``; each field's help is shown by ``paragen generate --help``."""

    k: int = field(default=4, metadata={"help": "draft sequences per step; >= 1"})
    length: int = field(default=4, metadata={"help": "tokens per draft sequence, i.e. draft calls per step; >= 1"})
    verifier: str = field(default="kseq", metadata={
        "help": "kseq (SpecTr's K-SEQ, i.i.d. drafts) or rrs (recursive rejection sampling)"})
    replacement: bool = field(default=True, metadata={
        "help": "drafts drawn i.i.d. (true) or, at each node, without replacement (false; rrs only)"})
    ceiling: int = field(default=0, metadata={
        "help": "measure the first N steps' acceptance against the optimal multi-draft acceptance "
        "(stats.extra.ceiling; ~5 ms a step i.i.d., up to ~0.5 s without replacement); 0 = off"})

    def __post_init__(self) -> None:
        if self.k < 1 or self.length < 1:
            raise UnsupportedOptionError(f"spectr: k and length must be >= 1, got k={self.k}, length={self.length}")
        if self.verifier not in ("kseq", "rrs"):
            raise UnsupportedOptionError(f"spectr: verifier must be 'kseq' or 'rrs', got '{self.verifier}'")
        if self.ceiling < 0:
            raise UnsupportedOptionError(f"spectr: ceiling must be >= 0 (steps to measure), got {self.ceiling}")
        if self.verifier == "kseq" and not self.replacement:
            raise UnsupportedOptionError("spectr: K-SEQ assumes i.i.d. drafts; use replacement=true or verifier=rrs")


class SpecTr(Strategy):
    name = "spectr"
    Options = SpecTrOptions
    needs_draft = True
    summary = "k sampled draft sequences as a tree, verified by SpecTr's K-SEQ (or recursive rejection)"

    @classmethod
    def slack(cls, o: SpecTrOptions) -> int:
        return 1 + o.k * o.length

    def prefill(self, prompt: list[int]) -> None:
        super().prefill(prompt)
        self.drafter = TreeDrafter(self.ctx.draft, self.ctx.cache_length)
        self.drafter.prefill(self.seq)
        self.ctx.extra.update(proposed=[], accepted=[], nodes=0)

    def propose(self, length: int) -> TokenTree:
        """k draft sequences of ``length`` tokens, as a tree with per-node candidates and q."""
        o, ctx = self.opts, self.ctx
        sampling = SamplingParams(1.0) if ctx.sampling.greedy else ctx.sampling
        tree, logits = self.drafter.start(self.seq)
        through = {0: o.k}  # node -> drafts passing through it
        level, logits = [0], logits[None]
        for d in range(length):
            for node, q in zip(level, warp(logits, sampling)):
                m = through[node] if o.replacement else min(through[node], int((q > 0).sum()))
                tree.q[node] = q
                for t in torch.multinomial(q, m, replacement=o.replacement, generator=ctx.generator).tolist():
                    child = tree.add(node, t)
                    through[child] = through.get(child, 0) + 1
            level = tree.level(d + 1)
            if d + 1 < length:
                logits = self.drafter.expand(tree, level)
        tree.replacement = o.replacement
        return tree

    def step(self, budget: int) -> list[int]:
        ctx, n = self.ctx, len(self.seq)
        length = min(self.opts.length, budget - 1)
        # 1. propose: k draft sequences merged into a tree (none when one token is wanted)
        tree = self.propose(length) if length else TokenTree(self.seq[-1])
        # 2. verify: one target forward over the newest token and every node; K-SEQ or
        #    recursive rejection among the surviving drafts at each depth
        logits = feed(ctx.target, self.cache, tree.tokens, n - 1, mask=tree.mask(), positions=tree.positions(n - 1))
        path, nxt = verify_tree(tree, logits, ctx.sampling, ctx.generator, rule=self.opts.verifier)
        # 3. commit: both caches keep the accepted path only
        self.cache.keep([0, *path])
        if length:
            self.drafter.accept(path)
        committed = [*(tree.tokens[i] for i in path), nxt]
        self.seq.extend(committed)
        record_tree(ctx.extra, tree, len(path))
        if ctx.extra.get("ceiling", {}).get("positions", 0) < self.opts.ceiling and tree.q[0] is not None:
            self.measure(logits[0], tree, bool(path))
        return committed

    def measure(self, logits: torch.Tensor, tree: TokenTree, accepted: bool) -> None:
        """Add the root position to ``extra["ceiling"]``: whether the target's token was among
        the drafts, the optimal acceptance for this (p, q, k) (Hu et al. 2025), and K-SEQ's
        exact acceptance (i.i.d. drafts). Means over positions = their sums / positions."""
        from paragen.optimum import kseq_acceptance, optimal_acceptance

        o, q, k = self.opts, tree.q[0], len(tree.cands[0])
        p = warp(logits, self.ctx.sampling)  # one-hot under greedy: the argmax must be drafted
        rec = self.ctx.extra.setdefault("ceiling", dict(positions=0, accepted=0, optimum=0.0, kseq=0.0))
        rec["positions"] += 1
        rec["accepted"] += int(accepted)
        rec["optimum"] += optimal_acceptance(p, q, k, o.replacement)
        if o.replacement:
            rec["kseq"] += kseq_acceptance(p, q, k)
