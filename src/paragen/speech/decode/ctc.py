"""``ctc``: the CTC head alone, no decoder call: greedy best path, or prefix beam search.

Greedy: argmax per encoder frame, merge repeats, drop blanks (Graves et al. 2006, sec. 3.1).
Prefix beam search (Graves et al. 2006 sec. 3.2; the form of Hannun et al. 2014, Alg. 1):
each prefix keeps the probability of all its alignments so far that end in a blank (``pb``)
and in its last label (``pnb``); a label equal to the prefix's last one extends the prefix
only from ``pb`` (a blank must separate repeats) and otherwise repeats it; alignments that
reach the same prefix are merged by adding. With a beam as wide as the number of prefixes it
is exact: it returns the labelling with the highest total probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import CountedSpeechModel, ctc_best_path
from paragen.speech.model import Encoded
from paragen.trace import Call, Recorder

NAME = "ctc"
SUMMARY = "CTC head only (no decoder call): greedy best path, or prefix beam search with beam > 1"
LOSSLESS = False


@dataclass(frozen=True)
class Options:
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


@torch.no_grad()
def decode(model: CountedSpeechModel, enc: Encoded, options: Options, trace: Recorder | None = None) -> list[int]:
    """CTC transcription of one encoded utterance (no decoder call: a trace gets one step with
    ``target_calls`` 0, the encoder's CTC head read out; its frames are in the trace's meta)."""
    if trace:
        trace.begin([0])
    if options.beam == 1:
        labels, _ = ctc_best_path(enc)
        out = align.collapse(labels.tolist())
    else:
        S = int(enc.lengths[0])
        out = prefix_beam_search(enc.ctc_logits[0, :S].float().log_softmax(-1), options.beam)
    if trace:
        trace.lap("verify")
        trace.step(Call("nar", "ctc", out, positions=list(range(len(out))), accepted=list(range(len(out)))), out,
                   target_calls=0)
    return out
