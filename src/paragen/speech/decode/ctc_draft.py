"""``ctc_draft``: the CTC hypothesis as a draft that the AR decoder verifies, lossless.

A chain strategy (``paragen.strategies.base.ChainStrategy``, as ``lookup`` and ``speculative``
are): one decoder call feeds each row's last committed character and its draft; greedy chain
verification keeps the longest prefix on which the AR decoder's argmax agrees and adds the
decoder's own next character (a correction, or the bonus: EOS when the whole draft was
right). The output is therefore exactly ``ar`` greedy's, whatever the draft; the draft only
decides how many calls it takes: one when CTC and the decoder agree on the utterance.

After a correction the rest of the CTC hypothesis is re-aimed at the committed text: if the
correction equals the draft's next character, CTC had inserted one (skip it), otherwise it
substituted one (skip the wrong one); a missed character costs a call or two until the
decoder and the draft line up again.

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


@dataclass
class DraftRow(JointRow):
    """A row's own state: what is left of its CTC hypothesis, its last proposal (cut at the
    budget), and the part of that proposal the last call refuted (None before the first call)."""

    rest: list[int] = field(default_factory=list)
    proposal: list[int] = field(default_factory=list)
    rejected: list[int] | None = None


class CTCDraft(JointChain):
    name = "ctc_draft"
    summary = "CTC greedy hypothesis drafted, verified by the attention decoder in one call (lossless: ar with its ctc_weight)"
    trace_source = "ctc"

    def new_row(self, b: int, states: torch.Tensor | None) -> DraftRow:
        joint = super().new_row(b, states)
        return DraftRow(joint.stats, joint.chooser, rest=self.hypothesis(self.ctx.target.memory, b))

    def hypothesis(self, memory, row: int) -> list[int]:
        """The draft of row ``row`` before any correction: its CTC greedy hypothesis."""
        labels, _ = ctc_best_path(memory, row)
        return align.collapse(labels.tolist())

    def propose(self, budgets: list[int]) -> tuple[torch.Tensor, list[int], None]:
        """The rest of each row's hypothesis, re-aimed after the last call's correction."""
        for seq, own in zip(self.seqs, self.own):
            if own.rejected is not None:
                correction, rejected = seq[-1], own.rejected
                if len(rejected) > 1 and rejected[1] == correction:
                    own.rest = rejected[2:]  # CTC inserted rejected[0]
                else:
                    own.rest = rejected[1:]  # CTC substituted rejected[0] (or the draft had ended)
        # The proposal is cut at the budget and the chain one shorter: the decoder's own token
        # fills the last place (a draft that long would only confirm it)
        for own, budget in zip(self.own, budgets):
            own.proposal = own.rest[:budget]
        chains = [own.proposal[: budget - 1] for own, budget in zip(self.own, budgets)]
        lengths = [len(c) for c in chains]
        device = self.ctx.target.device
        draft = pad(chains, device) if max(lengths) else torch.zeros(len(chains), 0, dtype=torch.long, device=device)
        return draft, lengths, None

    def accepted(self, accept: list[int], lengths: list[int], before: list[int]) -> None:
        for own, a in zip(self.own, accept):
            own.rejected = own.proposal[a:]
