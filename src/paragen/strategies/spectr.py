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
from paragen.sampling import warp
from paragen.strategies.drafter import TreeDraftStrategy
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


class SpecTr(TreeDraftStrategy):
    name = "spectr"
    Options = SpecTrOptions
    summary = "k sampled draft sequences as a tree, verified by SpecTr's K-SEQ (or recursive rejection)"

    @classmethod
    def slack(cls, o: SpecTrOptions) -> int:
        return 1 + o.k * o.length

    def propose(self, budgets: list[int]) -> list[TokenTree]:
        return self.trees([min(self.opts.length, n - 1) for n in budgets], self.grow)

    def grow(self, b: int, length: int) -> TokenTree:
        """k draft sequences of ``length`` tokens, as a tree with per-node candidates and q."""
        o, drafter, generator = self.opts, self.own[b].drafter, self.rows[b].generator
        tree, logits = drafter.start(self.rows[b].seq)
        through = {0: o.k}  # node -> drafts passing through it
        level, logits = [0], logits[None]
        for d in range(length):
            for node, q in zip(level, warp(logits, self.draft_sampling())):
                m = through[node] if o.replacement else min(through[node], int((q > 0).sum()))
                tree.q[node] = q
                for t in torch.multinomial(q, m, replacement=o.replacement, generator=generator).tolist():
                    child = tree.add(node, t)
                    through[child] = through.get(child, 0) + 1
            level = tree.level(d + 1)
            if d + 1 < length:
                logits = drafter.expand(tree, level)
        tree.replacement = o.replacement
        return tree

    def verify(self, b: int, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
        """K-SEQ or recursive rejection at each node; the first ``ceiling`` steps also measure
        the root's acceptance against the optimum."""
        path, nxt = verify_tree(tree, logits, self.ctx.sampling, self.rows[b].generator, rule=self.opts.verifier)
        stats = self.own[b].stats
        if stats.get("ceiling", {}).get("positions", 0) < self.opts.ceiling and tree.q[0] is not None:
            self.measure(stats, logits[0], tree, bool(path))
        return path, nxt

    def measure(self, extra: dict, logits: torch.Tensor, tree: TokenTree, accepted: bool) -> None:
        """Add the root position to ``extra["ceiling"]``: whether the target's token was among
        the drafts, the optimal acceptance for this (p, q, k) (Hu et al. 2025), and K-SEQ's
        exact acceptance (i.i.d. drafts). Means over positions = their sums / positions."""
        from paragen.optimum import kseq_acceptance, optimal_acceptance

        o, q, k = self.opts, tree.q[0], len(tree.cands[0])
        p = warp(logits, self.ctx.sampling)  # one-hot under greedy: the argmax must be drafted
        rec = extra.setdefault("ceiling", dict(positions=0, accepted=0, optimum=0.0, kseq=0.0))
        rec["positions"] += 1
        rec["accepted"] += int(accepted)
        rec["optimum"] += optimal_acceptance(p, q, k, o.replacement)
        if o.replacement:
            rec["kseq"] += kseq_acceptance(p, q, k)
