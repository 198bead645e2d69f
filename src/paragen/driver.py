"""The one decoding loop every strategy runs under: stopping, streaming and statistics.

Stopping is decided here, never in a strategy, so every strategy stops exactly as ``ar``
does: at ``max_new_tokens``, before the first EOS token (which is not emitted), or before
the first occurrence of a stop string (the text is cut there and the tokens are cut to
the shortest prefix whose text contains it). In a batch each row stops by the same rules,
on its own, and leaves the batch when it does (``Row`` holds one prompt's stopping state).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Generator as Gen
from dataclasses import asdict, dataclass, field
from typing import Any

from paragen.strategies.base import DecodeContext, Strategy
from paragen.trace import Trace, plain


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
    trace: Trace | None = None  # with generate(..., trace=True): every call's proposal and decisions

    def to_dict(self) -> dict[str, Any]:
        d = {"text": self.text, "tokens": self.tokens, "stats": self.stats.to_dict()}
        if self.trace is not None:
            d["trace"] = self.trace.to_dict()
        return d


def _stop_at(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    """The first index at which a stop string begins, searching from ``start``."""
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of text not safe to stream yet: a suffix that may grow into a stop string."""
    hold = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class Detokenizer:
    """A token stream's text, decoded incrementally: each ``add`` decodes only the tokens since
    the last complete character plus the few before them, so a whole generation costs time
    linear in its length (decoding everything at every step is quadratic).

    The few tokens before (from ``prefix``) give the tokenizer the context it decodes a
    boundary with (SentencePiece drops a leading space of the first token it decodes); the
    text of ``tokens[prefix:read]`` is what was already emitted, and what ``tokens[prefix:]``
    decodes to beyond it is new, unless it ends in an unfinished UTF-8 character (U+FFFD),
    which waits for the next tokens (``flush`` takes it as it is, at the end).
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""
        self.prefix = self.read = 0  # tokens[:read] are in text; tokens[prefix:read] give the boundary context

    def add(self, tokens: list[int]) -> str:
        """Take tokens; return the new complete text ("" if none yet)."""
        self.tokens.extend(tokens)
        return self._advance(final=False)

    def flush(self) -> str:
        """The text of the tokens still held back (an unfinished character decodes as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.tokenizer is None or self.read == len(self.tokens):
            return ""
        decode = self.tokenizer.decode
        done = decode(self.tokens[self.prefix : self.read])
        full = decode(self.tokens[self.prefix :])
        if len(full) <= len(done) or (full.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.tokens)
        new = full[len(done) :]
        self.text += new
        return new


class Row:
    """One prompt's stopping state: its new tokens, what was streamed, and its statistics."""

    def __init__(self, strategy: str, max_new_tokens: int, tokenizer, eos_ids: tuple[int, ...],
                 stop: tuple[str, ...]) -> None:
        self.max_new_tokens, self.tokenizer, self.eos_ids, self.stop = max_new_tokens, tokenizer, eos_ids, stop
        self.stats = Stats(strategy=strategy)
        self.detok = Detokenizer(tokenizer)
        self.tokens = self.detok.tokens
        self.streamed = 0
        self.hist: Counter[int] = Counter()
        self.done = False

    @property
    def text(self) -> str:
        return self.detok.text

    @property
    def budget(self) -> int:
        return self.max_new_tokens - len(self.tokens)

    def add(self, committed: list[int]) -> str:
        """Take one step's committed tokens; return the text now safe to stream ("" if none)."""
        stats, stop = self.stats, self.stop
        before = len(self.tokens)
        committed = committed[: self.budget]  # a step may overshoot the budget
        if any(t in self.eos_ids for t in committed):
            committed = committed[: next(i for i, t in enumerate(committed) if t in self.eos_ids)]
            stats.finish_reason = "eos"
        searched = max(len(self.text) - max(map(len, stop), default=0) + 1, 0)  # a stop may end in the new text
        self.detok.add(committed)
        if stats.finish_reason != "length" or len(self.tokens) >= self.max_new_tokens:
            self.detok.flush()
        cut = _stop_at(self.text, stop, searched) if stop else None
        if cut is not None:
            stats.finish_reason = "stop"
            self._cut(cut)
        self.hist[len(self.tokens) - before] += 1  # tokens kept (past EOS, a stop or the budget: dropped)
        self.done = stats.finish_reason != "length" or len(self.tokens) >= self.max_new_tokens
        text = self.text
        safe = len(text) if self.done else len(text) - _held_back(text, stop)
        piece = text[self.streamed : safe] if safe > self.streamed else ""
        self.streamed = max(self.streamed, safe)
        return piece

    def _cut(self, cut: int) -> None:
        """End the text before a stop string at ``cut``, and the tokens at the shortest prefix
        whose text holds it (only this step's tokens are tried: earlier text had no stop)."""
        detok, stop = self.detok, self.stop
        while len(self.tokens) > 1 and _stop_at(self.tokenizer.decode(self.tokens[:-1]), stop, cut) is not None:
            self.tokens.pop()
        detok.text = detok.text[:cut]
        detok.prefix = detok.read = len(self.tokens)

    def generation(self) -> Generation:
        self.stats.new_tokens = len(self.tokens)
        self.stats.committed_per_call = dict(self.hist)
        return Generation(tokens=list(self.tokens), text=self.text, stats=self.stats)


def decode(
    strategy: Strategy,
    ctx: DecodeContext,
    prompts: list[list[int]],
    max_new_tokens: int | list[int],
    tokenizer,
    eos_ids: tuple[int, ...],
    stop: tuple[str, ...] = (),
) -> Gen[tuple[int, str], None, list[Generation]]:
    """Run ``strategy`` on a batch of prompts to completion, yielding ``(row, text piece)`` as
    rows commit text; return one Generation per prompt, in order.

    A row that finishes (budget, EOS, stop string) leaves the batch at once: the strategy
    drops it from its tensors (``select``), so the rows left compute no dead row. Each row's
    ``target_calls`` / ``draft_calls`` count the calls of the steps it took part in (a batched
    call counts once for every row in it); its ``seconds`` run from the start (prefill
    included) to the step that finished it. ``max_new_tokens``: one budget for every row, or
    one per row (a speech row's is its utterance's length limit).
    """
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    rows = [Row(strategy.name, budget, tokenizer, eos_ids, stop) for budget in budgets]
    t0 = time.perf_counter()
    strategy.prefill_rows(prompts)
    draft_calls = ctx.drafting_calls
    for row in rows:
        row.stats.prefill_calls = ctx.target.calls
    active = list(range(len(prompts)))  # original row of each row of the current batch
    trace = ctx.trace  # a Recorder when tracing, else None
    while active:
        if trace:
            trace.begin(active)
        calls = ctx.target.calls, draft_calls()
        committed = strategy.step_rows([rows[r].budget for r in active])
        calls = ctx.target.calls - calls[0], draft_calls() - calls[1]
        staying = []
        for i, (r, tokens) in enumerate(zip(active, committed)):
            row = rows[r]
            row.stats.target_calls += calls[0]
            row.stats.draft_calls += calls[1]
            before = len(row.tokens)
            piece = row.add(tokens)
            if trace:
                trace.end(i, tokens, len(row.tokens) - before, *calls)
            if piece:
                yield r, piece
            if row.done:
                row.stats.seconds = time.perf_counter() - t0
                row.stats.extra = {**ctx.extra, **strategy.row_extra(i)}  # ctx.extra: the run's (weights)
            else:
                staying.append(i)
        if len(staying) < len(active):
            if staying:
                strategy.select(staying)
            active = [active[i] for i in staying]
    generations = [row.generation() for row in rows]
    if trace:
        for gen, t in zip(generations, trace.traces):
            gen.trace = t
            t.tokens, t.text, t.stats = list(gen.tokens), gen.text, plain(gen.stats.to_dict())
            t.describe(tokenizer.decode if tokenizer is not None else None)
    return generations
