"""The driver's per-row stopping and text: incremental detokenisation equals the full decode."""

from __future__ import annotations

import random

import pytest

from paragen.driver import Row
from paragen.models.io import resolve
from paragen.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_dir(resolve("code-target"))


def byte_tokens(tokenizer: Tokenizer) -> list[int]:
    """Tokens whose text is one raw byte (byte-level BPE's base alphabet): streams of them cut
    UTF-8 characters at every possible place."""
    return [i for i in range(tokenizer.vocab_size) if len(tokenizer.backend.id_to_token(i) or "") == 1]


def run(tokenizer: Tokenizer, tokens: list[int], steps: list[int], stop: tuple[str, ...] = (), n: int | None = None):
    row, pieces, i = Row("ar", n or len(tokens), tokenizer, eos_ids=(), stop=stop), [], 0
    for k in steps:
        pieces.append(row.add(tokens[i : i + k]))
        i += k
        if row.done:
            break
    return row, "".join(pieces)


@pytest.mark.parametrize("seed", range(30))
def test_incremental_text_equals_the_full_decode_on_random_streams(tokenizer, seed):
    """Random streams of whole tokens and raw bytes (multi-byte characters split across steps,
    invalid sequences too), committed a random number at a time: the streamed pieces add up
    to the full decode, and no piece ends in the middle of a character."""
    rng = random.Random(seed)
    singles = byte_tokens(tokenizer)
    text = "é→漢字 🙂 def f(x):\n    return x\n"
    tokens = []
    for _ in range(rng.randrange(5, 60)):
        r = rng.random()
        if r < 0.4:
            tokens.append(rng.choice(singles))
        elif r < 0.7:
            tokens += tokenizer.encode(rng.choice(text.split(" ")) + " ")
        else:
            tokens.append(rng.randrange(2, tokenizer.vocab_size))
    steps = [rng.randrange(1, 5) for _ in tokens]
    row, streamed = run(tokenizer, tokens, steps)
    assert row.done and row.tokens == tokens
    assert row.text == tokenizer.decode(tokens) == streamed


@pytest.mark.parametrize("seed", range(30))
def test_stop_strings_that_span_steps_cut_like_the_full_decode(tokenizer, seed):
    """A stop string inserted at a random place, its tokens committed across steps: the text ends
    before it, the tokens at the shortest prefix whose text holds it, as decoding the whole
    token list each time would give."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "délta", "ε", "\n", "    ", "()", "STOP", "ST", "OP"]
    tokens = tokenizer.encode("".join(rng.choice(words) for _ in range(rng.randrange(4, 30))))
    stop = ("STOP", "→x")
    steps = [rng.randrange(1, 6) for _ in tokens]
    row, streamed = run(tokenizer, tokens, steps, stop)
    full = tokenizer.decode(tokens)
    first = min((i for s in stop if (i := full.find(s)) >= 0), default=None)
    if first is None:
        assert row.stats.finish_reason == "length" and row.text == full
    else:
        shortest = next(n for n in range(1, len(tokens) + 1) if any(s in tokenizer.decode(tokens[:n]) for s in stop))
        assert row.stats.finish_reason == "stop"
        assert row.text == full[:first] == streamed
        assert row.tokens == tokens[:shortest]
