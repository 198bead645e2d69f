"""``ctc``: the CTC head alone, no decoder call: greedy best path, or prefix beam search.

Greedy: argmax per encoder frame, merge repeats, drop blanks (Graves et al. 2006, sec. 3.1).
Prefix beam search (Graves et al. 2006 sec. 3.2; the form of Hannun et al. 2014, Alg. 1):
each prefix keeps the probability of all its alignments so far that end in a blank (``pb``)
and in its last label (``pnb``); a label equal to the prefix's last one extends the prefix
only from ``pb`` (a blank must separate repeats) and otherwise repeats it; alignments that
reach the same prefix are merged by adding. With a beam as wide as the number of prefixes it
is exact: it returns the labelling with the highest total probability.

A strategy with no model call: it commits each row's labelling in its first step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import NARStrategy, characters, ctc_best_path
from paragen.trace import Call


@dataclass(frozen=True)
class CTCOptions:
    beam: int = field(default=1, metadata={"help": "prefixes kept per frame; 1 = greedy best path"})

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be at least 1, got {self.beam}")


def _add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without overflow."""
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(log_probs: torch.Tensor, beam: int) -> list[int]:
    """The most probable labelling of log_probs [S, V] (frame log-posteriors) under a beam of ``beam`` prefixes."""
    lp = log_probs.double().tolist()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (log pb, log pnb)
    for frame in lp:
        nxt: dict[tuple[int, ...], list[float]] = {}

        def acc(prefix: tuple[int, ...], blank: float, nonblank: float, nxt: dict = nxt) -> None:
            cur = nxt.setdefault(prefix, [-math.inf, -math.inf])
            cur[0], cur[1] = _add(cur[0], blank), _add(cur[1], nonblank)

        for prefix, (pb, pnb) in beams.items():
            total = _add(pb, pnb)
            acc(prefix, total + frame[vocab.BLANK], -math.inf)  # blank: the prefix stays, now ends in blank
            for c in range(len(frame)):
                if c == vocab.BLANK:
                    continue
                if prefix and c == prefix[-1]:
                    acc(prefix, -math.inf, pnb + frame[c])  # repeat merged into the last label
                    acc((*prefix, c), -math.inf, pb + frame[c])  # a new label after a blank
                else:
                    acc((*prefix, c), -math.inf, total + frame[c])
        ranked = sorted(nxt.items(), key=lambda kv: _add(*kv[1]), reverse=True)[:beam]
        beams = {p: (v[0], v[1]) for p, v in ranked}
    return list(max(beams.items(), key=lambda kv: _add(*kv[1]))[0])


@dataclass
class Row:
    tokens: list[int]
    extra: dict = field(default_factory=dict)


class CTC(NARStrategy):
    name = "ctc"
    summary = "CTC head only (no decoder call): greedy best path, or prefix beam search with beam > 1"
    Options = CTCOptions

    def start(self, row: int) -> Row:
        """The CTC labelling of the row (no decoder call)."""
        if self.opts.beam == 1:
            labels, _ = ctc_best_path(self.memory, row)
            return Row(align.collapse(labels.tolist()))
        return Row(prefix_beam_search(self.memory.log_probs(row), self.opts.beam))

    def finished(self, row: Row) -> bool:
        return True

    def finish(self, b: int) -> list[int]:
        """Commit the labelling; a trace gets one step with ``target_calls`` 0, the encoder's CTC
        head read out (its frames are in the trace's meta)."""
        out = characters(self.rows[b].tokens)
        if self.ctx.trace:
            self.ctx.trace.lap("verify")
            self.ctx.trace.call(b, Call("nar", "ctc", out, positions=list(range(len(out))), accepted=list(range(len(out)))))
        return [*out, vocab.EOS]
