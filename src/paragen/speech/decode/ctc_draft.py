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

from typing import ClassVar

import torch

from paragen.speech import align
from paragen.speech.decode.base import JointChain, ctc_best_path
from paragen.strategies.base import pad


class CTCDraft(JointChain):
    name = "ctc_draft"
    summary = "CTC greedy hypothesis drafted, verified by the attention decoder in one call (lossless: ar with its ctc_weight)"
    trace_source = "ctc"
    # Per row: what is left of its CTC hypothesis, its last proposal (cut at the budget), and
    # the part of that proposal the last call refuted (None before the first call).
    row_lists: ClassVar[tuple[str, ...]] = (*JointChain.row_lists, "rests", "proposals", "rejected")

    def prepare_rows(self, states: torch.Tensor | None) -> None:
        super().prepare_rows(states)
        memory = self.ctx.target.memory
        self.rests = [self.hypothesis(memory, b) for b in range(len(self.seqs))]
        self.proposals = [[] for _ in self.seqs]
        self.rejected = [None for _ in self.seqs]

    def hypothesis(self, memory, row: int) -> list[int]:
        """The draft of row ``row`` before any correction: its CTC greedy hypothesis."""
        labels, _ = ctc_best_path(memory, row)
        return align.collapse(labels.tolist())

    def propose(self, budgets: list[int]) -> tuple[torch.Tensor, list[int], None]:
        """The rest of each row's hypothesis, re-aimed after the last call's correction."""
        for b, (seq, rejected) in enumerate(zip(self.seqs, self.rejected)):
            if rejected is not None:
                correction = seq[-1]
                if len(rejected) > 1 and rejected[1] == correction:
                    self.rests[b] = rejected[2:]  # CTC inserted rejected[0]
                else:
                    self.rests[b] = rejected[1:]  # CTC substituted rejected[0] (or the draft had ended)
        # The proposal is cut at the budget and the chain one shorter: the decoder's own token
        # fills the last place (a draft that long would only confirm it)
        self.proposals = [rest[:budget] for rest, budget in zip(self.rests, budgets)]
        chains = [p[: budget - 1] for p, budget in zip(self.proposals, budgets)]
        lengths = [len(c) for c in chains]
        device = self.ctx.target.device
        draft = pad(chains, device) if max(lengths) else torch.zeros(len(chains), 0, dtype=torch.long, device=device)
        return draft, lengths, None

    def accepted(self, accept: list[int], lengths: list[int], before: list[int]) -> None:
        self.rejected = [p[a:] for p, a in zip(self.proposals, accept)]
