"""``blockwise_relaxed``: blockwise parallel decoding with relaxed acceptance: LOSSY.

Stern et al. (2018, section 5) trade exactness for longer accepted blocks: a proposal is
kept when it is merely close to the target's choice (``paragen.verify.relaxed_accept``:
among the target's top m, or within eps of its best log-probability). Everything else is
``blockwise`` (one target call per step, proposals scored and made in the same forward).

A separate strategy rather than an option of ``blockwise``: a strategy's ``lossless`` flag
is what the API, the bench and the reports read, so a relaxed run can never be counted,
or reported, as exact. Its stats carry ``extra["lossy"] = True`` and the rule used.
Greedy only: relaxed acceptance has no sampling counterpart that keeps any distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.errors import UnsupportedOptionError
from paragen.strategies.base import OwnRow, to_device
from paragen.strategies.blockwise import MAX_HEADS, Blockwise
from paragen.verify import relaxed_accept


@dataclass(frozen=True)
class BlockwiseRelaxedOptions:
    """Settings of ``blockwise_relaxed``; each field's help is shown by ``paragen generate --help``."""

    k: int = field(default=0, metadata={"help": "heads used per step; 0: every head; >= 0"})
    accept: str = field(default="top_m", metadata={"help": "LOSSY rule: top_m | distance"})
    m: int = field(default=2, metadata={"help": "top_m: accept a proposal among the target's m most likely tokens; >= 1"})
    eps: float = field(default=1.0, metadata={
        "help": "distance: accept a proposal within eps nats of the target's most likely token; >= 0"})

    def __post_init__(self) -> None:
        if not 0 <= self.k <= MAX_HEADS:
            raise UnsupportedOptionError(f"blockwise_relaxed: k must be between 0 (every head) and {MAX_HEADS}, got {self.k}")
        if self.accept not in ("top_m", "distance"):
            raise UnsupportedOptionError(f"blockwise_relaxed: accept must be 'top_m' or 'distance', got '{self.accept}'")
        if self.m < 1 or self.eps < 0:
            raise UnsupportedOptionError(f"blockwise_relaxed: m must be >= 1 and eps >= 0, got {self.m}, {self.eps}")


class BlockwiseRelaxed(Blockwise):
    name = "blockwise_relaxed"
    Options = BlockwiseRelaxedOptions
    lossless = False
    supports_sampling = False
    summary = "LOSSY blockwise: proposals accepted when in the target's top m (or within eps nats)"

    def new_row(self, b: int, states: torch.Tensor | None) -> OwnRow:
        o, row = self.opts, super().new_row(b, states)
        row.stats.update(lossy=True, acceptance=f"top_m={o.m}" if o.accept == "top_m" else f"distance={o.eps}")
        return row

    def verify_rows(self, draft: torch.Tensor, lengths: torch.Tensor, logits: torch.Tensor,
                    q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``relaxed_accept`` row by row (on the host: this rule is a CPU-side comparison per row)."""
        o, out = self.opts, []
        for row, n, lg in zip(draft.tolist(), lengths.tolist(), logits):
            out.append(relaxed_accept(row[:n], lg[: n + 1], o.accept, o.m, o.eps))
        accept, nxt = zip(*out)
        return to_device(list(accept), logits.device), to_device(list(nxt), logits.device)
