"""``ctc_draft``: the CTC hypothesis as a draft that the AR decoder verifies, lossless.

One decoder call feeds the last committed character and the whole draft; greedy chain
verification (``paragen.verify.greedy_accept``) keeps the longest prefix on which the AR
decoder's argmax agrees and adds the decoder's own next character (a correction, or the
bonus: EOS when the whole draft was right). The output is therefore exactly ``ar`` greedy's,
whatever the draft; the draft only decides how many calls it takes: one when CTC and the
decoder agree on the utterance.

After a correction the rest of the CTC hypothesis is re-aimed at the committed text: if the
correction equals the draft's next character, CTC had inserted one (skip it), otherwise it
substituted one (skip the wrong one); a missed character costs a call or two until the
decoder and the draft line up again.

``ctc_weight`` > 0 verifies against joint CTC/attention greedy decoding instead
(``base.GreedyChooser``, the same chooser as ``ar``'s option): the output is exactly
``ar[ctc_weight=...]``'s, still in one decoder call per draft, since the CTC prefix scores
along the draft need no model call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import CountedSpeechModel, GreedyChooser, GreedyOptions, ctc_best_path, max_length
from paragen.speech.model import Encoded
from paragen.trace import Call, Recorder, chain_parents, probs_of

NAME = "ctc_draft"
SUMMARY = "CTC greedy hypothesis drafted, verified by the attention decoder in one call (lossless: ar with its ctc_weight)"
LOSSLESS = True


@dataclass(frozen=True)
class Options(GreedyOptions):
    """The draft is the CTC greedy hypothesis; ``ctc_weight``: the greedy decoding it reproduces (``ar``'s)."""


@torch.no_grad()
def verify_drafts(model: CountedSpeechModel, enc: Encoded, drafter: Callable[[list[int], list[int] | None], list[int]],
                  limit: int, ctc_weight: float = 0.0, trace: Recorder | None = None) -> list[int]:
    """AR greedy output of one utterance (joint CTC/attention greedy with ``ctc_weight``), verified chain by chain.

    ``drafter(committed, rejected)`` proposes the characters after ``committed`` (``rejected``:
    the draft the last call refuted, from its first wrong character on; None at the start).
    """
    dev, chooser = model.device, GreedyChooser(enc, ctc_weight)
    cache = model.new_cache(1, limit + 2)
    out: list[int] = []
    last, rejected = vocab.EOS, None
    while len(out) < limit:
        if trace:
            trace.begin([0])
        # 1. propose: at most up to the length limit
        draft = drafter(out, rejected)[: limit - len(out)]
        # 2. verify: [last, d1..dk] at positions n..n+k gives the argmax after each prefix
        tokens = torch.tensor([[last, *draft]], device=dev)
        positions = torch.arange(len(out), len(out) + len(draft) + 1, device=dev)[None]
        logits = model.decode(tokens, positions, enc, cache)[0]
        a, nxt = chooser.accept(logits, draft)
        # 3. commit: last and the accepted drafts are now in the cache; nxt is the new last
        cache.commit(1 + a)
        before = len(out)
        out += draft[:a]
        if nxt != vocab.EOS and len(out) < limit:
            out.append(nxt)
        if trace:
            p = logits.float().softmax(-1)
            trace.lap("verify")
            trace.step(Call("chain", "ctc", draft, chain_parents(len(draft)), list(range(a)), probs_of(p[: len(draft)], draft),
                            next_p=float(p[a, nxt])), out[before:limit])
        if nxt == vocab.EOS or len(out) >= limit:
            break
        last, rejected = nxt, draft[a:]
    return out[:limit]


def ctc_drafter(hypothesis: list[int]) -> Callable[[list[int], list[int] | None], list[int]]:
    """A drafter that proposes the rest of ``hypothesis``, re-aimed after each correction."""
    state = {"rest": hypothesis}

    def drafter(committed: list[int], rejected: list[int] | None) -> list[int]:
        if rejected is not None:
            correction = committed[-1]
            if len(rejected) > 1 and rejected[1] == correction:
                state["rest"] = rejected[2:]  # CTC inserted rejected[0]
            else:
                state["rest"] = rejected[1:]  # CTC substituted rejected[0] (or the draft had ended)
        return state["rest"]

    return drafter


def decode(model: CountedSpeechModel, enc: Encoded, options: Options, trace: Recorder | None = None) -> list[int]:
    """ar-greedy-identical transcription of one encoded utterance, drafted by CTC."""
    labels, _ = ctc_best_path(enc)
    return verify_drafts(model, enc, ctc_drafter(align.collapse(labels.tolist())), max_length(enc), options.ctc_weight,
                         trace)
