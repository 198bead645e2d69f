"""The speech strategies, one module each: strategies over an encoder-decoder's decoder
(``paragen.models.seq2seq``), run by the shared driver (``paragen.driver``) as the LM
strategies are. ``ar`` and ``ctc_draft`` are chain strategies (``ar`` is the LM ``ar``),
``ctc_tree`` a tree strategy;
``ctc``, ``mask_predict`` and ``cass_nat`` fix each row's length from CTC and commit it
whole; ``beam`` searches one utterance at a time.

A table of their own beside ``paragen.strategies.STRATEGIES``: a name means a strategy for
one kind of model (``ar`` runs either kind, with joint CTC scoring as a speech option).
"""

from __future__ import annotations

from paragen.speech.decode.ar import AR
from paragen.speech.decode.beam import Beam
from paragen.speech.decode.cass_nat import CassNat
from paragen.speech.decode.ctc import CTC
from paragen.speech.decode.ctc_draft import CTCDraft
from paragen.speech.decode.ctc_tree import CTCTree
from paragen.speech.decode.mask_predict import MaskPredict
from paragen.strategies.base import Strategy

DECODERS: dict[str, type[Strategy]] = {s.name: s for s in (AR, Beam, CTC, CTCDraft, CTCTree, MaskPredict, CassNat)}


def get_decoder(name: str) -> type[Strategy]:
    """The speech strategy called ``name``, or an UnknownStrategyError naming the others."""
    from paragen.errors import UnknownStrategyError

    if name not in DECODERS:
        raise UnknownStrategyError(f"unknown speech strategy '{name}': choose one of {', '.join(DECODERS)}")
    return DECODERS[name]
