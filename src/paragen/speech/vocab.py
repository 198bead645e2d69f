"""The character vocabulary shared by the CTC head and both decoders.

Characters, not BPE: CTC needs at least as many encoder frames as labels, which 40 ms
frames give for characters at any espeak rate used here; a 31-symbol closed set has no
out-of-vocabulary words and needs no tokenizer training; and the NAR decoders take their
length from the CTC hypothesis, which is exact in the same units. The price is longer
decoder outputs (about 5x BPE-4k), which makes the AR decoder's per-token cost visible.
"""

from __future__ import annotations

import re

BLANK, EOS, MASK = 0, 1, 2  # CTC blank; start and end of the decoder's sequence; the NAR mask
CHARS = " 'abcdefghijklmnopqrstuvwxyz"
VOCAB = ("<blank>", "<eos>", "<mask>", *CHARS)
_ID = {c: i + 3 for i, c in enumerate(CHARS)}


def normalize(text: str) -> str:
    """A transcript as the model spells it: lower case, letters, apostrophes inside words, single spaces."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^a-z' ]", " ", text)
    words = [w.strip("'") for w in text.split()]
    return " ".join(w for w in words if w)


def encode(text: str) -> list[int]:
    """Ids of a normalized transcript (characters outside the vocabulary are an error)."""
    try:
        return [_ID[c] for c in text]
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the speech vocabulary; normalize() the text first") from e


def decode(ids: list[int]) -> str:
    """Text of ids; blank, eos and mask are dropped."""
    return "".join(VOCAB[i] for i in ids if i > MASK)


class Characters:
    """The vocabulary as a tokenizer (``encode`` / ``decode``), for the shared decoding loop."""

    @staticmethod
    def encode(text: str) -> list[int]:
        return encode(text)

    @staticmethod
    def decode(ids: list[int]) -> str:
        return decode(ids)


TOKENIZER = Characters()
