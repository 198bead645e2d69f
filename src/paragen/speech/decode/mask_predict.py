"""``mask_predict``: CMLM mask-predict (Ghazvininejad et al. 2019, sec. 3).

The decoder: a model's own CMLM decoder (``SpeechModel.cmlm_logits``: each character's input
is its embedding or the mask's, plus the token-level acoustic embedding of the frames the CTC
best path gives it, so a masked character knows where it is spoken), else the NAR decoder it
shares with CASS-NAT (token embeddings only: models trained before the CMLM decoder).

Length: the CTC greedy hypothesis's (as Mask-CTC, Higuchi et al. 2020, takes it). Two starts:

- ``init="masks"`` (CMLM): iteration 0 feeds L masks and fills every position with its
  argmax; iteration t = 1..T-1 re-masks the n = floor(L (T - t) / T) lowest-confidence
  positions and predicts them again (a re-predicted position takes its new argmax and
  probability, the others keep theirs). T decoder calls, and after iteration t, L - n(t + 1)
  positions stay unmasked: with T = L exactly one more per iteration.
- ``init="ctc"`` (Mask-CTC, Higuchi et al. 2020, sec. 3.2): start from the CTC greedy
  hypothesis itself and mask only its tokens whose CTC confidence (the highest posterior
  among the frames the token collapses from) is below ``threshold``; then fill the masks
  easy-first: iteration t predicts every masked position and keeps the ceil(m / (T - t))
  most confident of the m still masked. A character model's CTC output is mostly right but
  for a few letters, which the decoder then predicts from the acoustics and both sides'
  letters; the decoder is never asked to spell a whole sentence from masks alone, the part
  a small NAR decoder does worst. At most T decoder calls, none when no token is masked.

A batch of utterances fills its rows together, one NAR call per iteration (rows padded to
the longest); a row commits its characters when its last position is final.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import NARStrategy, characters, ctc_best_path
from paragen.trace import Call, Recorder

INITS = ("masks", "ctc")


@dataclass(frozen=True)
class MaskPredictOptions:
    iterations: int = field(default=4, metadata={"help": "T: decoder calls (each re-predicts the masked positions)"})
    init: str = field(default="masks", metadata={
        "help": "masks: CMLM from L masks | ctc: Mask-CTC, the CTC hypothesis with its low-confidence tokens masked"})
    threshold: float = field(default=0.999, metadata={
        "help": "init=ctc: mask a CTC token whose confidence is below this, in (0, 1]"})

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got '{self.init}'")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")


@dataclass
class Row:
    """One utterance's fill: tokens [L] (``vocab.MASK`` where unknown), their confidences [L]
    (CMLM), which are still to predict [L] (Mask-CTC), and the calls made so far."""

    tokens: torch.Tensor
    probs: torch.Tensor
    masked: torch.Tensor
    segments: torch.Tensor  # [L, S] each character's frames on the CTC best path
    t: int = 0
    extra: dict = field(default_factory=lambda: {"kept_per_iteration": []})


def ctc_tokens(labels: list[int], conf: list[float]) -> tuple[list[int], list[float]]:
    """The CTC greedy hypothesis (``align.collapse``) and each token's confidence: the highest
    frame posterior among the frames it collapses from."""
    tokens, scores, prev = [], [], None
    for x, c in zip(labels, conf):
        if x != vocab.BLANK:
            if x != prev:
                tokens.append(x)
                scores.append(c)
            else:
                scores[-1] = max(scores[-1], c)
        prev = x
    return tokens, scores


def predict(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, argmax) [B, L] of NAR logits [B, L, V]: blank, EOS and mask are not characters."""
    logits = logits.float()
    logits[..., : vocab.MASK + 1] = float("-inf")
    return logits.softmax(-1).max(-1)


class MaskPredict(NARStrategy):
    name = "mask_predict"
    summary = ("CMLM mask-predict (the CMLM decoder, else the NAR decoder): length from CTC, T iterations re-masking "
               "the least confident")
    trace_source = "model"
    Options = MaskPredictOptions

    def start(self, row: int) -> Row:
        """CMLM: L masks, L the CTC hypothesis's length; Mask-CTC: the hypothesis, its tokens
        below ``threshold`` masked."""
        labels, conf = ctc_best_path(self.memory, row)
        dev = labels.device
        _, seg = align.segments(labels[None], torch.ones(1, len(labels), dtype=torch.bool, device=dev))
        tokens, scores = ctc_tokens(labels.tolist(), conf.tolist())
        segments = seg[0, : len(tokens)]
        if self.opts.init == "ctc":
            x = torch.tensor(tokens, dtype=torch.long, device=dev)
            masked = torch.tensor([c < self.opts.threshold for c in scores], dtype=torch.bool, device=dev)
            x[masked] = vocab.MASK
            return Row(x, torch.zeros(len(tokens), device=dev), masked, segments,
                       extra={"kept_per_iteration": [], "masked": int(masked.sum())})
        L = len(tokens)
        return Row(torch.full((L,), vocab.MASK, dtype=torch.long, device=dev), torch.zeros(L, device=dev),
                   torch.ones(L, dtype=torch.bool, device=dev), segments)

    def finished(self, row: Row) -> bool:
        if self.opts.init == "ctc":
            return not bool(row.masked.any())  # every mask filled (at the latest after T calls)
        return row.t == self.opts.iterations or len(row.tokens) == 0

    def finish(self, b: int) -> list[int]:
        return [*characters(self.rows[b].tokens.tolist()), vocab.EOS]

    def advance(self) -> list[list[int]]:
        """1. predict every row's masked positions in one call; 2. keep (Mask-CTC) or re-mask
        (CMLM) by confidence; 3. commit the rows that are final."""
        target, dev = self.ctx.target, self.ctx.target.device
        L, S = max(len(r.tokens) for r in self.rows), self.memory.memory.shape[1]
        tokens = torch.full((len(self.rows), L), vocab.MASK, dtype=torch.long, device=dev)
        pad = torch.ones(len(self.rows), L, dtype=torch.bool, device=dev)
        segments = torch.zeros(len(self.rows), L, S, dtype=torch.bool, device=dev)
        for b, r in enumerate(self.rows):
            n = len(r.tokens)
            tokens[b, :n], pad[b, :n], segments[b, :n, : r.segments.shape[1]] = r.tokens, False, r.segments
        if target.has_cmlm:
            p, y = predict(target.cmlm(tokens, segments, self.memory))
        else:
            p, y = predict(target.nar_tokens(tokens, self.memory, pad))
        if self.ctx.trace:
            self.ctx.trace.lap("verify")
        for b, r in enumerate(self.rows):
            n = len(r.tokens)
            (self.fill_ctc if self.opts.init == "ctc" else self.fill_masks)(r, y[b, :n], p[b, :n], b)
            r.t += 1
        return [self.finish(b) if self.finished(r) else [] for b, r in enumerate(self.rows)]

    def fill_masks(self, r: Row, y: torch.Tensor, p: torch.Tensor, b: int) -> None:
        """CMLM iteration t: every masked position takes its prediction; then the n = floor(L (T - t - 1) / T)
        least confident positions are masked again for the next iteration."""
        L, T, masked = len(r.tokens), self.opts.iterations, r.tokens == vocab.MASK
        r.tokens, r.probs = torch.where(masked, y, r.tokens), torch.where(masked, p, r.probs)
        n = L * (T - r.t - 1) // T
        if n:
            r.tokens[r.probs.topk(n, largest=False).indices] = vocab.MASK
        r.extra["kept_per_iteration"].append(L - n)
        if self.ctx.trace:
            trace_fill(self.ctx.trace, b, masked, y, p, r.tokens != vocab.MASK)

    def fill_ctc(self, r: Row, y: torch.Tensor, p: torch.Tensor, b: int) -> None:
        """Mask-CTC iteration t: of the m masked positions, the ceil(m / (T - t)) most confident keep
        their prediction (the last iteration fills every mask left)."""
        was, m = r.masked.clone(), int(r.masked.sum())
        take = -(-m // (self.opts.iterations - r.t))
        best = torch.where(r.masked, p, -1.0).topk(take).indices
        r.tokens[best], r.masked[best] = y[best], False
        r.extra["kept_per_iteration"].append(len(r.tokens) - int(r.masked.sum()))
        if self.ctx.trace:
            trace_fill(self.ctx.trace, b, was, y, p, ~r.masked)


def trace_fill(trace: Recorder, row: int, masked: torch.Tensor, y: torch.Tensor, p: torch.Tensor,
               unmasked: torch.Tensor) -> None:
    """Record one iteration of a row (tracing only): every position it predicted (``masked`` [L]
    before the call) with its candidate and confidence; accepted: those left unmasked after it;
    ``remasked``: positions it did not predict but masked again (CMLM re-masks any)."""
    where = masked.nonzero()[:, 0]
    trace.call(row, Call("diffusion", "model", y[where].tolist(), positions=where.tolist(), scores=p[where].tolist(),
                         accepted=unmasked[where].nonzero()[:, 0].tolist(), block=[0, len(masked)],
                         detail={"remasked": (~unmasked & ~masked).nonzero()[:, 0].tolist()}))
