"""``lookup``: prompt lookup / input-guided aggressive decoding (Ge et al. 2022; PLD).

The draft is copied from the context: the most recent earlier occurrence of the last n
tokens (n from ``max_ngram`` down to ``min_ngram``) proposes the tokens that followed it.
No draft model. Verification is the speculative rule with a deterministic draft, i.e.
q = one-hot(x): x is accepted with probability p(x), and a rejection samples from p with
x removed and renormalised, norm(max(0, p - q)). So sampled output is distributed exactly
as the target's; greedy output equals greedy decoding. In a batch each row copies from its
own context (on the host, where the committed tokens are anyway) and drafts its own length.
Stats: the copied drafts' ``proposed`` / ``accepted`` per position and ``nodes``
(``paragen.strategies.counts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from paragen.errors import UnsupportedOptionError
from paragen.strategies.base import ChainStrategy, pad


@dataclass(frozen=True)
class LookupOptions:
    """Settings of ``lookup``: suffix lengths are tried longest first."""

    max_ngram: int = field(default=3, metadata={"help": "longest context suffix to match; >= min_ngram"})
    min_ngram: int = field(default=1, metadata={"help": "shortest context suffix to match; >= 1"})
    max_draft: int = field(default=10, metadata={"help": "tokens copied after a match (the draft length k); >= 1"})

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise UnsupportedOptionError(f"lookup: need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")
        if self.max_draft < 1:
            raise UnsupportedOptionError(f"lookup: max_draft must be >= 1, got {self.max_draft}")


def find_draft(seq: np.ndarray, max_ngram: int, min_ngram: int, k: int) -> list[int]:
    """Tokens following the most recent earlier match of seq's last n tokens (longest n first)."""
    for n in range(min(max_ngram, len(seq) - 1), min_ngram - 1, -1):
        pattern = seq[-n:]
        windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], n)  # candidate starts 0..len-n-1
        hits = np.flatnonzero((windows == pattern).all(axis=1))
        if len(hits):
            start = hits[-1] + n
            return seq[start : start + k].tolist()
    return []


class Lookup(ChainStrategy):
    name = "lookup"
    Options = LookupOptions
    trace_source = "context"
    summary = "copies n-gram continuations from the context as the draft"

    @classmethod
    def slack(cls, o: LookupOptions) -> int:
        return o.max_draft + 1

    # This step's drafts when a caller already searched for them (``auto`` does, to choose), else None.
    given: list[list[int]] | None = None

    def drafts(self, budgets: list[int]) -> list[list[int]]:
        """Each row's copied draft for this step ([] where nothing matches or one token is wanted)."""
        o = self.opts
        return [find_draft(np.asarray(seq), o.max_ngram, o.min_ngram, min(o.max_draft, budget - 1)) if budget > 1
                else [] for seq, budget in zip(self.seqs, budgets)]

    def propose(self, budgets: list[int]) -> tuple[torch.Tensor, list[int], None]:
        """Copy what followed the latest earlier occurrence of each row's suffix (q = one-hot)."""
        drafts, self.given = self.given or self.drafts(budgets), None
        lengths = [len(d) for d in drafts]
        device = self.ctx.target.device
        draft = pad(drafts, device) if max(lengths) else torch.zeros(len(drafts), 0, dtype=torch.long, device=device)
        return draft, lengths, None
