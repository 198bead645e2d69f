"""``ar``: the attention decoder, greedy, one token per call with its KV cache (the reference).

``ctc_weight`` > 0 makes it joint CTC/attention greedy decoding (``base.GreedyChooser``):
each character maximises the joint score, still one decoder call per character.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from paragen.speech import vocab
from paragen.speech.decode.base import CountedSpeechModel, GreedyChooser, GreedyOptions, max_length
from paragen.speech.model import Encoded
from paragen.trace import Call, Recorder

NAME = "ar"
SUMMARY = "attention decoder, greedy, one character per decoder call, KV cache (the reference)"
LOSSLESS = True


@dataclass(frozen=True)
class Options(GreedyOptions):
    """Greedy decoding up to the shared length limit; ``ctc_weight`` > 0: joint CTC/attention greedy."""


@torch.no_grad()
def decode(model: CountedSpeechModel, enc: Encoded, options: Options, trace: Recorder | None = None) -> list[int]:
    """Greedy AR decoding of one encoded utterance until EOS or ``max_length``; ``trace``: record each call."""
    limit, chooser = max_length(enc), GreedyChooser(enc, options.ctc_weight)
    cache = model.new_cache(1, limit + 1)
    out: list[int] = []
    tok = vocab.EOS  # the decoder starts from EOS (its start-of-sequence symbol)
    while len(out) < limit:
        if trace:
            trace.begin([0])
        logits = model.decode(torch.tensor([[tok]], device=model.device), torch.tensor([[len(out)]], device=model.device),
                              enc, cache)
        cache.commit(1)
        _, tok = chooser.accept(logits[0, -1:], [])
        if trace:
            trace.lap("verify")
            trace.step(Call("none", "target", next_p=float(logits[0, -1].float().softmax(-1)[tok])),
                       [] if tok == vocab.EOS else [tok])
        if tok == vocab.EOS:
            break
        out.append(tok)
    return out
