"""``mask_predict``: CMLM mask-predict on the NAR decoder (Ghazvininejad et al. 2019, sec. 3).

Length: the CTC greedy hypothesis's (as Mask-CTC, Higuchi et al. 2020, takes it). Iteration
0 feeds L masks and fills every position with its argmax; iteration t = 1..T-1 re-masks the
n = floor(L (T - t) / T) lowest-confidence positions and predicts them again (a re-predicted
position takes its new argmax and probability, the others keep theirs). T decoder calls, and
after iteration t, L - n(t + 1) positions stay unmasked: with T = L exactly one more per
iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import CountedSpeechModel, ctc_best_path
from paragen.speech.model import Encoded

NAME = "mask_predict"
SUMMARY = "CMLM mask-predict on the NAR decoder: length from CTC, T iterations re-masking the least confident"
LOSSLESS = False


@dataclass(frozen=True)
class Options:
    iterations: int = field(default=4, metadata={"help": "T: decoder calls (each re-predicts the masked positions)"})

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")


@torch.no_grad()
def mask_predict(model: CountedSpeechModel, enc: Encoded, length: int, iterations: int) -> tuple[list[int], list[int]]:
    """Tokens after ``iterations`` rounds at ``length``, and how many positions each round left unmasked."""
    if length == 0:
        return [], []
    dev, L = model.device, length
    tokens = torch.full((1, L), vocab.MASK, dtype=torch.long, device=dev)
    probs = torch.zeros(1, L, device=dev)
    pad = torch.zeros(1, L, dtype=torch.bool, device=dev)
    kept = []
    for t in range(iterations):
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
    return tokens[0].tolist(), kept


def decode(model: CountedSpeechModel, enc: Encoded, options: Options) -> tuple[list[int], dict]:
    """Mask-predict transcription of one encoded utterance, and its kept positions per iteration."""
    labels, _ = ctc_best_path(enc)
    out, kept = mask_predict(model, enc, len(align.collapse(labels.tolist())), options.iterations)
    return out, {"kept_per_iteration": kept}
