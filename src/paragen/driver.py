"""The one decoding loop every strategy runs under: stopping, streaming and statistics.

Stopping is decided here, never in a strategy, so every strategy stops exactly as ``ar``
does: at ``max_new_tokens``, before the first EOS token (which is not emitted), or before
the first occurrence of a stop string (the text is cut there and the tokens are cut to
the shortest prefix whose text contains it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Generator as Gen
from dataclasses import asdict, dataclass, field
from typing import Any

from paragen.strategies.base import DecodeContext, Strategy


@dataclass
class Stats:
    """``target_calls`` counts decoding calls; the one prompt prefill call is ``prefill_calls``."""

    strategy: str
    new_tokens: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    prefill_calls: int = 0
    seconds: float = 0.0
    finish_reason: str = "length"  # "length" | "eos" | "stop"
    committed_per_call: dict[int, int] = field(default_factory=dict)  # histogram: tokens -> steps
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_call(self) -> float:
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_call"] = round(self.tokens_per_call, 4)
        d["tokens_per_second"] = round(self.tokens_per_second, 2)
        d["committed_per_call"] = {str(k): v for k, v in sorted(self.committed_per_call.items())}
        return d


@dataclass
class Generation:
    """``tokens``: the new tokens only (prompt excluded); ``text``: their decoded text."""

    tokens: list[int]
    text: str
    stats: Stats

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "stats": self.stats.to_dict()}


def _stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of text not safe to stream yet: an unfinished UTF-8 character,
    or a suffix that may grow into a stop string."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


def decode(
    strategy: Strategy,
    ctx: DecodeContext,
    prompt: list[int],
    max_new_tokens: int,
    tokenizer,
    eos_ids: tuple[int, ...],
    stop: tuple[str, ...] = (),
) -> Gen[str, None, Generation]:
    """Run ``strategy`` to completion, yielding committed text pieces; return the Generation."""
    stats = Stats(strategy=strategy.name)
    t0 = time.perf_counter()
    strategy.prefill(prompt)
    stats.prefill_calls = ctx.target.calls
    draft_prefill = ctx.draft.calls if ctx.draft else 0
    tokens: list[int] = []
    streamed = 0
    hist: Counter[int] = Counter()
    while len(tokens) < max_new_tokens:
        committed = strategy.step(max_new_tokens - len(tokens))
        hist[len(committed)] += 1
        committed = committed[: max_new_tokens - len(tokens)]  # a step may overshoot the budget
        if any(t in eos_ids for t in committed):
            committed = committed[: next(i for i, t in enumerate(committed) if t in eos_ids)]
            stats.finish_reason = "eos"
        tokens.extend(committed)
        text = tokenizer.decode(tokens) if tokenizer is not None else ""
        cut = _stop_at(text, stop) if stop else None
        if cut is not None:
            stats.finish_reason = "stop"
            while len(tokens) > 1 and _stop_at(tokenizer.decode(tokens[:-1]), stop) is not None:
                tokens.pop()
            text = text[:cut]
        done = stats.finish_reason != "length" or len(tokens) >= max_new_tokens
        safe = len(text) if done else len(text) - _held_back(text, stop)
        if safe > streamed:
            yield text[streamed:safe]
            streamed = safe
        if done:
            break
    stats.seconds = time.perf_counter() - t0
    stats.new_tokens = len(tokens)
    stats.target_calls = ctx.target.calls - stats.prefill_calls
    stats.draft_calls = ctx.draft.calls - draft_prefill if ctx.draft else 0
    stats.committed_per_call = dict(hist)
    stats.extra = dict(ctx.extra)
    return Generation(tokens=tokens, text=text, stats=stats)
