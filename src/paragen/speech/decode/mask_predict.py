"""``mask_predict``: CMLM mask-predict on the NAR decoder (Ghazvininejad et al. 2019, sec. 3).

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import CountedSpeechModel, ctc_best_path
from paragen.speech.model import Encoded
from paragen.trace import Call, Recorder

NAME = "mask_predict"
SUMMARY = "CMLM mask-predict on the NAR decoder: length from CTC, T iterations re-masking the least confident"
LOSSLESS = False


INITS = ("masks", "ctc")


@dataclass(frozen=True)
class Options:
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


@torch.no_grad()
def mask_predict(model: CountedSpeechModel, enc: Encoded, length: int, iterations: int,
                 trace: Recorder | None = None) -> tuple[list[int], list[int]]:
    """Tokens after ``iterations`` rounds at ``length``, and how many positions each round left unmasked."""
    if length == 0:
        return [], []
    dev, L = model.device, length
    tokens = torch.full((1, L), vocab.MASK, dtype=torch.long, device=dev)
    probs = torch.zeros(1, L, device=dev)
    pad = torch.zeros(1, L, dtype=torch.bool, device=dev)
    kept = []
    for t in range(iterations):
        if trace:
            trace.begin([0])
        masked = tokens == vocab.MASK
        # 1. predict every masked position in one call (blank, EOS and mask are not characters)
        logits = model.nar_tokens(tokens, enc, pad).float()
        logits[..., : vocab.MASK + 1] = float("-inf")
        p, y = logits.softmax(-1).max(-1)
        tokens, probs = torch.where(masked, y, tokens), torch.where(masked, p, probs)
        # 2. re-mask the n least confident for the next iteration
        n = L * (iterations - t - 1) // iterations
        if n:
            tokens[0, probs[0].topk(n, largest=False).indices] = vocab.MASK
        kept.append(L - n)
        if trace:
            trace_fill(trace, masked[0], y[0], p[0], tokens[0] != vocab.MASK)
    return tokens[0].tolist(), kept


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


@torch.no_grad()
def mask_ctc(model: CountedSpeechModel, enc: Encoded, tokens: list[int], conf: list[float], threshold: float,
             iterations: int, trace: Recorder | None = None) -> tuple[list[int], list[int]]:
    """Mask-CTC: the tokens with confidences below ``threshold`` masked, then filled easy-first in
    at most ``iterations`` calls; returns the tokens and how many stay unmasked after each call."""
    dev, L = model.device, len(tokens)
    x = torch.tensor([tokens], dtype=torch.long, device=dev)
    masked = torch.tensor([[c < threshold for c in conf]], dtype=torch.bool, device=dev)
    x[masked] = vocab.MASK
    pad = torch.zeros(1, L, dtype=torch.bool, device=dev)
    kept = []
    for t in range(iterations):
        m = int(masked.sum())
        if m == 0:
            break
        if trace:
            trace.begin([0])
        was = masked[0].clone()
        logits = model.nar_tokens(x, enc, pad).float()
        logits[..., : vocab.MASK + 1] = float("-inf")  # blank, EOS and mask are not characters
        p, y = logits.softmax(-1).max(-1)
        take = -(-m // (iterations - t))  # ceil: the last iteration fills every mask left
        best = torch.where(masked, p, -1.0)[0].topk(take).indices
        x[0, best], masked[0, best] = y[0, best], False
        kept.append(L - int(masked.sum()))
        if trace:
            trace_fill(trace, was, y[0], p[0], ~masked[0])
    return x[0].tolist(), kept


def trace_fill(trace: Recorder, masked: torch.Tensor, y: torch.Tensor, p: torch.Tensor, unmasked: torch.Tensor) -> None:
    """Record one iteration (tracing only): every position it predicted (``masked`` [L] before
    the call) with its candidate and confidence; accepted: those left unmasked after it;
    ``remasked``: positions it did not predict but masked again (CMLM re-masks any)."""
    where = masked.nonzero()[:, 0]
    trace.lap("verify")
    trace.step(Call("diffusion", "model", y[where].tolist(), positions=where.tolist(), scores=p[where].tolist(),
                    accepted=unmasked[where].nonzero()[:, 0].tolist(), block=[0, len(masked)],
                    detail={"remasked": (~unmasked & ~masked).nonzero()[:, 0].tolist()}), [])


def decode(model: CountedSpeechModel, enc: Encoded, options: Options,
           trace: Recorder | None = None) -> tuple[list[int], dict]:
    """Mask-predict transcription of one encoded utterance, and its kept positions per iteration."""
    labels, conf = ctc_best_path(enc)
    if options.init == "ctc":
        tokens, scores = ctc_tokens(labels.tolist(), conf.tolist())
        out, kept = mask_ctc(model, enc, tokens, scores, options.threshold, options.iterations, trace)
        masked = sum(c < options.threshold for c in scores)
        extra = {"kept_per_iteration": kept, "masked": masked}
    else:
        out, kept = mask_predict(model, enc, len(align.collapse(labels.tolist())), options.iterations, trace)
        extra = {"kept_per_iteration": kept}
    if trace:
        trace.settle(out)
    return out, extra
