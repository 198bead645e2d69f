"""What every strategy shares: its context, the Strategy interface, and a counted model.

A strategy keeps the committed sequence ``seq`` (prompt included) and a cache per model
holding the keys/values of ``seq[:-1]``: the newest token is always fed by the next
call. ``prefill`` fills the caches; each ``step`` makes one iteration
(propose -> verify -> commit) and returns the tokens it committed, left to right
(draft-and-verify strategies commit at least one; a diffusion step may finish none).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from paragen.models.base import Model
from paragen.sampling import SamplingParams

# The most tokens one model call may feed, whatever the context: the API refuses options
# whose ``Strategy.call_tokens`` exceeds it or the model context. Attention over T new
# tokens costs O(T^2) memory; 1024 is ~30x the default lookahead call (31 tokens) and keeps
# one call of the built-in models under a few hundred MB.
MAX_CALL_TOKENS = 1024


class CountedModel:
    """Delegates to a model and counts forward calls (the unit every speedup is measured in)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.info = model.info
        self.calls = 0

    def __call__(self, tokens, positions, cache=None, mask=None, return_hidden=False):
        self.calls += 1
        if return_hidden:
            return self.model(tokens, positions, cache=cache, mask=mask, return_hidden=True)
        return self.model(tokens, positions, cache=cache, mask=mask)

    def new_cache(self, max_length: int) -> Any:
        return self.model.new_cache(batch=1, max_length=max_length)


@dataclass
class DecodeContext:
    """Everything a strategy may use; built once per generation by the API."""

    target: CountedModel
    sampling: SamplingParams
    generator: torch.Generator
    cache_length: int  # slots to allocate: prompt + max_new_tokens + room for pending drafts
    draft: CountedModel | None = None
    heads: Any = None  # paragen.heads.Heads bound to the target, for strategies that ride on heads
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific statistics


class Strategy(ABC):
    """One decoding strategy. Subclasses set ``name``, ``Options`` and the capability flags."""

    name: ClassVar[str]
    Options: ClassVar[type]
    needs_draft: ClassVar[bool] = False
    head_kinds: ClassVar[tuple[str, ...]] = ()  # the kinds of prediction heads it runs on (none: needs no heads)
    supports_sampling: ClassVar[bool] = True
    lossless: ClassVar[bool] = True
    attention: ClassVar[str] = "causal"  # the kind of model it runs (ModelInfo.attention)
    summary: ClassVar[str] = ""

    @classmethod
    def slack(cls, options: Any) -> int:
        """Cache slots a step may write beyond the committed tokens (drafts, windows)."""
        return 1

    @classmethod
    def call_tokens(cls, options: Any) -> int:
        """The most tokens one model call feeds with these options (the newest token plus
        drafts, windows, guesses). The API refuses options for which this exceeds the model
        context or ``MAX_CALL_TOKENS``. Default: ``slack``, since a call writes what it
        feeds; override when they differ."""
        return cls.slack(options)

    def __init__(self, ctx: DecodeContext, options: Any) -> None:
        self.ctx = ctx
        self.opts = options
        self.seq: list[int] = []

    def prefill(self, prompt: list[int]) -> None:
        """Default: the target's cache gets ``prompt[:-1]``; the first step feeds the rest."""
        self.seq = list(prompt)
        self.cache = self.ctx.target.new_cache(self.ctx.cache_length)
        prefill_cache(self.ctx.target, self.cache, self.seq)

    @abstractmethod
    def step(self, budget: int) -> list[int]:
        """Commit tokens in order; ``budget`` is how many more are wanted (>= 1)."""


def feed(model: CountedModel, cache: Any, tokens: list[int], start: int, mask: torch.Tensor | None = None,
         positions: list[int] | None = None, hidden: bool = False):
    """One forward of ``tokens`` (batch 1) after the cache's committed slots; logits [T, V],
    or (logits [T, V], final-norm hidden states [T, H]) from the same call when ``hidden``.

    Positions are ``start, start+1, ...`` unless given (trees and windows pass their own).
    """
    x = torch.tensor([tokens])
    pos = torch.tensor([positions]) if positions is not None else torch.arange(start, start + len(tokens))[None]
    if hidden:
        logits, states = model(x, pos, cache=cache, mask=mask, return_hidden=True)
        return logits[0], states[0]
    return model(x, pos, cache=cache, mask=mask)[0]


def prefill_cache(model: CountedModel, cache: Any, seq: list[int]) -> None:
    """Write ``seq[:-1]`` into an empty cache: the last token is fed by the first step."""
    if len(seq) > 1:
        feed(model, cache, seq[:-1], 0)
        cache.commit(len(seq) - 1)


def catch_up(model: CountedModel, cache: Any, seq: list[int]) -> torch.Tensor:
    """Feed the committed tokens the cache lacks (the newest at least); commit them all
    and return the logits of the last one [V]. Used by drafters that fell behind."""
    start = cache.length
    logits = feed(model, cache, seq[start:], start)
    cache.commit(len(seq) - start)
    return logits[-1]


def prefill_hidden(model: CountedModel, cache: Any, seq: list[int]) -> torch.Tensor | None:
    """``prefill_cache`` that also returns the final-norm hidden state at ``seq[-2]`` [H] (None for a
    one-token prompt): the state from which prediction heads draft what follows ``seq[-1]``."""
    if len(seq) < 2:
        return None
    _, hidden = feed(model, cache, seq[:-1], 0, hidden=True)
    cache.commit(len(seq) - 1)
    return hidden[-1]
