"""``ar``: the attention decoder, greedy, one character per decoder call with its KV cache (the reference).

The LM ``ar`` strategy itself (``paragen.strategies.ar``) on the speech decoder: each step the
decoder reads each row's newest character and commits its argmax. ``ctc_weight`` > 0 makes
it joint CTC/attention greedy decoding (``base.JointChain``): each character maximises the
joint score, still one decoder call per character.
"""

from __future__ import annotations

from paragen.speech.decode.base import JointChain
from paragen.strategies import ar


class AR(JointChain, ar.AR):
    name = "ar"
    summary = "attention decoder, greedy, one character per decoder call, KV cache (the reference)"
