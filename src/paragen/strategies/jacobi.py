"""``jacobi``: Jacobi fixed-point decoding (Santilli et al. 2023; Song et al. 2021).

Keep n guesses for the next tokens. One causal forward over [newest token, guesses]
gives the argmax y_i at every position given the guesses before it. y_0 is exact; each
guess equal to its own update (g_i == y_{i-1}) is a fixed point, so every y up to the
first changed guess is exact too: commit them (at least one per call) and carry the
remaining y as the next iteration's guesses. Exactly greedy decoding.
Stats: the guesses as drafts, ``proposed`` / ``accepted`` per window position and ``nodes``
(``paragen.strategies.counts``): a guess is accepted when it was already its own update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from paragen.errors import UnsupportedOptionError
from paragen.strategies.base import Strategy, feed
from paragen.strategies.counts import count_step, new_counts
from paragen.trace import Call, chain_parents, probs_of


@dataclass(frozen=True)
class JacobiOptions:
    """Settings of ``jacobi``."""

    window: int = field(default=8, metadata={"help": "guessed future tokens refined per call; >= 1"})

    def __post_init__(self) -> None:
        if self.window < 1:
            raise UnsupportedOptionError(f"jacobi: window must be >= 1, got {self.window}")


class Jacobi(Strategy):
    name = "jacobi"
    Options = JacobiOptions
    trace_source = "window"
    supports_sampling = False
    summary = "refines a window of guesses to a fixed point; greedy only"

    @classmethod
    def slack(cls, o: JacobiOptions) -> int:
        return o.window + 1

    def prefill(self, prompt: list[int]) -> None:
        super().prefill(prompt)
        self.guesses = [self.seq[-1]] * self.opts.window  # initial guess: repeat the last token
        self.counts = new_counts()

    def row_extra(self, row: int) -> dict[str, Any]:
        return {**super().row_extra(row), **self.counts}

    def step(self, budget: int) -> list[int]:
        n = len(self.seq)
        guesses = self.guesses[: max(0, budget - 1)]
        # 1. propose: the current guesses; 2. verify: one Jacobi update of all of them
        logits = feed(self.ctx.target, self.cache, [self.seq[-1], *guesses], n - 1)
        y = logits.argmax(-1).tolist()
        accept_len = 0
        while accept_len < len(guesses) and guesses[accept_len] == y[accept_len]:
            accept_len += 1
        count_step(self.counts, len(guesses), accept_len, len(guesses))
        if self.ctx.trace:  # the window as a chain of guesses; its update y is the next window
            self.ctx.trace.lap("verify")
            p = logits.float().softmax(-1)
            self.ctx.trace.call(0, Call("jacobi", self.trace_source, guesses, chain_parents(len(guesses)),
                                        list(range(accept_len)), probs_of(p[: len(guesses)], guesses),
                                        next_p=float(p[accept_len, y[accept_len]]), detail={"update": y}))
        # 3. commit y_0..y_a; the cache keeps the newest token and the converged guesses
        self.cache.commit(accept_len + 1)
        committed = y[: accept_len + 1]
        self.seq.extend(committed)
        rest = y[accept_len + 1 :]
        self.guesses = rest + [committed[-1]] * (self.opts.window - len(rest))
        return committed
