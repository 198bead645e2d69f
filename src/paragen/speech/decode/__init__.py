"""The speech decoders, one module each (see ``base`` for what a decoder module provides).

A registry of its own: the LM strategies in ``paragen.strategies`` run a causal LM through
the shared driver, while these turn one encoded utterance into characters with an encoder-
decoder; they share the verifier (``paragen.verify``) and the cache (``paragen.cache``).
"""

from __future__ import annotations

from types import ModuleType

from paragen.speech.decode import ar, beam, cass_nat, ctc, ctc_draft, mask_predict

DECODERS: dict[str, ModuleType] = {m.NAME: m for m in (ar, beam, ctc, ctc_draft, mask_predict, cass_nat)}


def get_decoder(name: str) -> ModuleType:
    """The decoder module called ``name``, or an UnknownStrategyError naming the others."""
    from paragen.errors import UnknownStrategyError

    if name not in DECODERS:
        raise UnknownStrategyError(f"unknown speech strategy '{name}': choose one of {', '.join(DECODERS)}")
    return DECODERS[name]
