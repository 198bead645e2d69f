"""``ctc_tree``: the CTC hypothesis and its likeliest alternatives as a token tree that the AR
decoder verifies in one call, lossless.

``ctc_draft`` drafts one chain, so each CTC error ends a call at the decoder's correction.
Here the chain (the hypothesis re-aligned to the committed text, ``ctc_draft.Aligner``)
carries branches where CTC was unsure, each continued by the rest of the hypothesis, so a
call goes on past an error the branches foresaw:

- **substitution** at character j: the likeliest other character in the frames j collapsed
  from (its highest frame posterior), then the hypothesis after j;
- **deletion** before character j: the likeliest character in the blank frames between j - 1
  and j (CTC heard something and emitted nothing), then the hypothesis from j on.

Of the alternatives within the chain's reach, the ``branches`` with the highest posterior
are drafted; the tree holds at most ``nodes`` drafted characters (branches are cut first).
The decoder scores the tree in one call (``TreeDraftStrategy``, an ancestor mask), and its
greedy choice walks it (``verify.verify_tree``), or with ``ctc_weight`` > 0 the joint
CTC/attention choice does (``GreedyChooser.walk``): the output is exactly ``ar``'s with the
same ``ctc_weight``, whatever the tree; the tree only decides how many calls it takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import GreedyChooser, GreedyOptions, ctc_best_path, joint_chooser
from paragen.speech.decode.ctc_draft import Aligner
from paragen.strategies.counts import new_counts
from paragen.strategies.drafter import TreeDraftStrategy, TreeRow
from paragen.tree import TokenTree


@dataclass(frozen=True)
class CTCTreeOptions(GreedyOptions):
    branches: int = field(default=4, metadata={"help": "alternatives drafted per call beside the hypothesis (0: a chain)"})
    nodes: int = field(default=96, metadata={"help": "most drafted characters per call"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.branches < 0:
            raise ValueError(f"branches must be 0 or more, got {self.branches}")
        if self.nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {self.nodes}")


@dataclass(frozen=True)
class Alternative:
    """A character CTC may have got wrong: ``token`` in place of hypothesis character ``at``
    (``skip`` 1: a substitution) or before it (``skip`` 0: a deletion), with its posterior."""

    at: int
    token: int
    skip: int
    score: float


def alternatives(labels: torch.Tensor, probs: torch.Tensor) -> tuple[list[int], list[Alternative]]:
    """The CTC hypothesis of best-path frame labels [S] and each frame's posteriors [S, V],
    and its alternatives (substitutions and deletions, as the module docstring says)."""
    chars = probs.clone()
    chars[:, : vocab.MASK + 1] = 0  # blank, EOS and the mask are not characters
    # each token's own run of frames [first, last] (align.segments' spans also take the blank
    # frames before a token, which here are the gap a deletion hides in)
    runs: list[tuple[int, int]] = []
    prev = vocab.BLANK
    for t, x in enumerate(labels.tolist()):
        if x != vocab.BLANK and x == prev:
            runs[-1] = (runs[-1][0], t)
        elif x != vocab.BLANK:
            runs.append((t, t))
        prev = x
    hyp = align.collapse(labels.tolist())
    out = []
    for j, (first, last) in enumerate(runs):
        frames = chars[first : last + 1].clone()
        frames[:, hyp[j]] = 0
        score, token = frames.max(0).values.max(0)
        out.append(Alternative(j, int(token), 1, float(score)))
        gap = chars[(runs[j - 1][1] + 1 if j else 0) : first]
        if len(gap):
            score, token = gap.max(0).values.max(0)
            out.append(Alternative(j, int(token), 0, float(score)))
    return hyp, sorted(out, key=lambda a: -a.score)


@dataclass
class CTCTreeRow(TreeRow):
    """A row's own state: its hypothesis's alignment, alternatives and (``ctc_weight`` > 0) joint chooser."""

    aligner: Aligner = field(default_factory=lambda: Aligner([]))
    alternatives: list[Alternative] = field(default_factory=list)
    chooser: GreedyChooser | None = None


class CTCTree(TreeDraftStrategy):
    name = "ctc_tree"
    summary = ("CTC hypothesis with branches where CTC was unsure, verified by the attention decoder in one call "
               "(lossless: ar with its ctc_weight)")
    attention = "encoder-decoder"
    supports_sampling = False
    needs_draft = False
    trace_source = "ctc"
    Options = CTCTreeOptions

    @classmethod
    def slack(cls, o: CTCTreeOptions) -> int:
        return o.nodes + 1

    def new_row(self, b: int, states: torch.Tensor | None) -> CTCTreeRow:
        memory = self.ctx.target.memory
        labels, _ = ctc_best_path(memory, b)
        hyp, alts = alternatives(labels, memory.log_probs(b).exp())
        return CTCTreeRow(new_counts(), None, Aligner(hyp), alts, joint_chooser(memory, b, self.opts.ctc_weight))

    def propose(self, budgets: list[int]) -> list[TokenTree]:
        return [self.grow(seq, own, budget - 1) for seq, own, budget in zip(self.seqs, self.own, budgets)]

    def grow(self, seq: list[int], own: CTCTreeRow, depth: int) -> TokenTree:
        """The re-aligned rest of the hypothesis, then the best alternatives within ``depth``,
        each followed by the rest of the hypothesis, in at most ``nodes`` drafted characters."""
        a = own.aligner
        a.follow(seq)
        hyp, start = a.hyp, a.end()
        tree, budget = TokenTree(seq[-1]), self.opts.nodes
        chain = [0]  # the node of each drafted hypothesis character, from ``start``
        for token in hyp[start : start + min(depth, budget)]:
            chain.append(tree.add(chain[-1], token))
        reach = start + len(chain) - 1
        picked = [x for x in own.alternatives if start <= x.at < reach][: self.opts.branches]
        for x in picked:
            node, d = chain[x.at - start], x.at - start  # the branch hangs after hyp[x.at - 1]
            for token in [x.token, *hyp[x.at + x.skip :]]:
                if d == depth or len(tree) > budget:  # len counts the root
                    break
                node, d = tree.add(node, token), d + 1
        return tree

    def verify(self, b: int, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
        chooser = self.own[b].chooser
        return super().verify(b, tree, logits) if chooser is None else chooser.walk(tree, logits)
