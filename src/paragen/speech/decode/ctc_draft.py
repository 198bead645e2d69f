"""``ctc_draft``: the CTC hypothesis as a draft that the AR decoder verifies, lossless.

A chain strategy (``paragen.strategies.base.ChainStrategy``, as ``lookup`` and ``speculative``
are): one decoder call feeds each row's last committed character and its draft; greedy chain
verification keeps the longest prefix on which the AR decoder's argmax agrees and adds the
decoder's own next character (a correction, or the bonus: EOS when the whole draft was
right). The output is therefore exactly ``ar`` greedy's, whatever the draft; the draft only
decides how many calls it takes: one when CTC and the decoder agree on the utterance.

Before each call the rest of the CTC hypothesis is re-aligned to the committed text: the
draft is the hypothesis after the prefix of it closest in edit distance to the committed
characters (``Aligner``; of equally close prefixes the longest), so after a correction the
draft goes on where CTC goes on, whatever its error was. A substituted or inserted character
realigns at once; a deleted one (CTC missed a character) is told from a substitution by the
next call, so each CTC error costs one or two calls. (Re-aiming from the last correction
alone, without the history, never realigned after a deletion: every call after it made one
character.)

``ctc_weight`` > 0 verifies against joint CTC/attention greedy decoding instead
(``base.JointChain``, the same rule as ``ar``'s option): the output is exactly
``ar[ctc_weight=...]``'s, still in one decoder call per draft, since the CTC prefix scores
along the draft need no model call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import align
from paragen.speech.decode.base import JointChain, JointRow, ctc_best_path
from paragen.strategies.base import pad


class Aligner:
    """Where the committed characters end in a hypothesis ``hyp``: the Levenshtein distances
    between the committed characters and every prefix of ``hyp``, one DP row per committed
    character (O(len(hyp)) each), so a whole utterance costs O(len(output) x len(hyp))."""

    def __init__(self, hyp: list[int]) -> None:
        self.hyp = hyp
        self.dist = list(range(len(hyp) + 1))  # nothing committed: distance j to the prefix hyp[:j]
        self.fed = 0  # committed characters folded into ``dist``

    def feed(self, chars: list[int]) -> None:
        for c in chars:
            prev, row = self.dist, [self.dist[0] + 1]
            for j, h in enumerate(self.hyp, 1):
                row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (c != h)))
            self.dist = row
        self.fed += len(chars)

    def follow(self, seq: list[int]) -> None:
        """Feed a row's committed characters not fed yet (``seq[0]`` is the prompt's EOS)."""
        self.feed(seq[1 + self.fed :])

    def rest(self) -> list[int]:
        """The hypothesis after the prefix closest to the committed characters (the longest of ties:
        after a correction that is a substitution, or an insertion when the correction is the
        hypothesis's next character, as CTC errors mostly are)."""
        return self.hyp[self.end() :]

    def end(self) -> int:
        """Where the closest prefix of the hypothesis ends (see ``rest``)."""
        best = min(self.dist)
        return max(j for j, d in enumerate(self.dist) if d == best)


@dataclass
class DraftRow(JointRow):
    """A row's own state: its CTC hypothesis's alignment to the committed characters."""

    aligner: Aligner = field(default_factory=lambda: Aligner([]))


class CTCDraft(JointChain):
    name = "ctc_draft"
    summary = "CTC greedy hypothesis drafted, verified by the attention decoder in one call (lossless: ar with its ctc_weight)"
    trace_source = "ctc"

    def new_row(self, b: int, states: torch.Tensor | None) -> DraftRow:
        joint = super().new_row(b, states)
        return DraftRow(joint.stats, joint.chooser, Aligner(self.hypothesis(self.ctx.target.memory, b)))

    def hypothesis(self, memory, row: int) -> list[int]:
        """The draft of row ``row`` before any correction: its CTC greedy hypothesis."""
        labels, _ = ctc_best_path(memory, row)
        return align.collapse(labels.tolist())

    def propose(self, budgets: list[int]) -> tuple[torch.Tensor, list[int], None]:
        """The rest of each row's hypothesis after the committed characters (``Aligner``)."""
        chains = []
        for seq, own, budget in zip(self.seqs, self.own, budgets):
            own.aligner.follow(seq)
            # The chain is one shorter than the budget: the decoder's own token fills the last
            # place (a draft that long would only confirm it)
            chains.append(own.aligner.rest()[: budget - 1])
        lengths = [len(c) for c in chains]
        device = self.ctx.target.device
        draft = pad(chains, device) if max(lengths) else torch.zeros(len(chains), 0, dtype=torch.long, device=device)
        return draft, lengths, None
