"""``lookahead``: lookahead decoding (Fu et al. 2024, "Break the Sequential Dependency of LLM
Inference Using Lookahead Decoding").

One forward carries three parts, separated by an explicit attention mask:
  - the newest committed token (its output is the exact next token);
  - the lookahead branch: a 2D Jacobi window of ``levels = ngram - 1`` rows by ``window``
    columns. Cell (l, j) sits ``l + j + 1`` tokens ahead and sees row 0 up to column j,
    then its own column's rows 1..l: a plausible prefix for a guess. The top row's outputs
    become a new row; each column read bottom-up plus its new token is an n-gram for the pool;
  - the verification branch: up to ``guesses`` pool n-grams that start with the newest
    token, each seeing only itself. The longest prefix matching the target's argmax is
    committed with one bonus token, so the output is exactly greedy decoding.
The accepted candidate's cache slots are compacted with ``cache.keep``. Candidates are cut
to the tokens still wanted (the budget), as ``jacobi`` cuts its window. Stats: the pool
candidates are the drafts, ``proposed`` / ``accepted`` per position (the longest candidate's
depth; the accepted prefix) and ``nodes`` (every candidate token verified), as for a tree
(``paragen.strategies.counts``); the window's guesses are not verified, so not counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from paragen.errors import UnsupportedOptionError
from paragen.strategies.base import Strategy, feed
from paragen.strategies.counts import count_step, new_counts
from paragen.trace import Call, probs_of


@dataclass(frozen=True)
class LookaheadOptions:
    """Settings of ``lookahead``: W = window, N = ngram, G = guesses; one call feeds
    1 + (N - 1)(W + G) tokens."""

    window: int = field(default=5, metadata={"help": "W: Jacobi window columns (tokens guessed ahead); >= 1"})
    ngram: int = field(default=4, metadata={"help": "N: n-gram length, so N - 1 window rows; >= 2"})
    guesses: int = field(default=5, metadata={"help": "G: pool n-grams verified per call; >= 0"})
    pool_from_prompt: bool = field(default=True, metadata={"help": "seed the n-gram pool with the prompt's own n-grams"})

    def __post_init__(self) -> None:
        if self.window < 1 or self.ngram < 2 or self.guesses < 0:
            raise UnsupportedOptionError(f"lookahead: need window >= 1, ngram >= 2, guesses >= 0; got {self}")


@lru_cache(maxsize=64)  # the same few shapes every step: build each once (callers never modify it)
def lookahead_mask(W: int, L: int, G: int, m: int) -> torch.Tensor:
    """Bool mask [T, T] over one call's new tokens, T = 1 + L*W + G*m (True = may attend)."""
    T = 1 + L * W + G * m
    mask = torch.zeros(T, T, dtype=torch.bool)
    mask[:, 0] = True
    cell = lambda r, j: 1 + r * W + j  # noqa: E731  (row r, column j) -> index
    for r in range(L):
        for j in range(W):
            mask[cell(r, j), [cell(0, jj) for jj in range(j + 1)]] = True
            mask[cell(r, j), [cell(rr, j) for rr in range(1, r + 1)]] = True
    base = 1 + L * W
    for g in range(G):
        for i in range(m):
            mask[base + g * m + i, base + g * m : base + g * m + i + 1] = True
    return mask


class Lookahead(Strategy):
    name = "lookahead"
    Options = LookaheadOptions
    trace_source = "pool"
    supports_sampling = False
    summary = "Jacobi window harvests n-grams, verified in the same call; greedy only"

    @classmethod
    def slack(cls, o: LookaheadOptions) -> int:
        return 1 + (o.ngram - 1) * (o.window + o.guesses)

    def prefill(self, prompt: list[int]) -> None:
        o = self.opts
        super().prefill(prompt)
        # Rows start as prompt tokens (the paper seeds the window from the context too).
        self.rows = [[prompt[(r * o.window + j) % len(prompt)] for j in range(o.window)] for r in range(o.ngram - 1)]
        self.pool: dict[int, list[tuple[int, ...]]] = defaultdict(list)
        if o.pool_from_prompt:
            for i in range(len(prompt) - o.ngram + 1):
                self.remember(tuple(prompt[i : i + o.ngram]))
        self.counts = new_counts()

    def row_extra(self, row: int) -> dict[str, Any]:
        return {**super().row_extra(row), **self.counts}

    def remember(self, gram: tuple[int, ...]) -> None:
        """Most recent first, no duplicates, at most ``guesses`` per first token."""
        bucket = self.pool[gram[0]]
        if gram[1:] in bucket:
            bucket.remove(gram[1:])
        bucket.insert(0, gram[1:])
        del bucket[max(self.opts.guesses, 1) :]

    def step(self, budget: int) -> list[int]:
        o, n = self.opts, len(self.seq)
        # m: candidate length, cut so that a step never commits more than the budget
        W, L, m = o.window, o.ngram - 1, min(o.ngram - 1, budget - 1)
        # 1. propose: pool candidates for the newest token, plus the lookahead window
        cands = [c[:m] for c in self.pool.get(self.seq[-1], [])[: o.guesses]] if m else []
        G = len(cands)
        tokens = [self.seq[-1]] + [t for row in self.rows for t in row] + [t for c in cands for t in c]
        offsets = [0] + [r + j + 1 for r in range(L) for j in range(W)] + [i + 1 for _ in range(G) for i in range(m)]
        mask = lookahead_mask(W, L, G, m)
        logits = feed(self.ctx.target, self.cache, tokens, n - 1, mask=mask, positions=[n - 1 + d for d in offsets])
        y = logits.argmax(-1).tolist()
        # 2. verify: the candidate whose tokens match the target's argmax the longest
        base = 1 + L * W
        best_g, accept_len = -1, 0
        for g, cand in enumerate(cands):
            outs = [y[0]] + y[base + g * m : base + (g + 1) * m]
            a = 0
            while a < m and cand[a] == outs[a]:
                a += 1
            if a > accept_len:
                best_g, accept_len = g, a
        count_step(self.counts, m if G else 0, accept_len, G * m)
        if best_g >= 0:
            nxt = y[base + best_g * m + accept_len - 1]
            committed = [*cands[best_g][:accept_len], nxt]
            self.cache.keep([0] + [base + best_g * m + i for i in range(accept_len)])
        else:
            committed = [y[0]]
            self.cache.commit(1)
        # 3. update the window: the top row's outputs form a new row; harvest n-grams
        new_row = [y[1 + (L - 1) * W + j] for j in range(W)]
        if self.ctx.trace:
            self.trace_call(logits, cands, best_g, accept_len, committed[-1], new_row)
        for j in range(W):
            self.remember(tuple(self.rows[r][j] for r in range(L)) + (new_row[j],))
        self.rows = self.rows[1:] + [new_row]
        self.seq.extend(committed)
        return committed

    def trace_call(self, logits: torch.Tensor, cands: list[list[int]], best: int, accept_len: int, nxt: int,
                   new_row: list[int]) -> None:
        """Record the step (tracing only): the pool candidates merged into a tree where their
        prefixes coincide (equal prefixes get equal logits), token i of a candidate scored by
        the target's logits at the root (i = 0) or at its own token i - 1; the window rows and
        the new row in ``detail``."""
        m, base = len(cands[0]) if cands else 0, 1 + len(self.rows) * self.opts.window
        node: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        tokens, parents, rows, path = [], [], [], []
        for g, cand in enumerate(cands):
            parent = -1
            for i, t in enumerate(cand):
                if (parent, t) not in node:
                    node[parent, t] = len(tokens)
                    tokens.append(t), parents.append(parent), rows.append(0 if i == 0 else base + g * m + i - 1)
                parent = node[parent, t]
                if g == best and i < accept_len:
                    path.append(parent)
        p = logits.float().softmax(-1)
        self.ctx.trace.lap("verify")
        self.ctx.trace.call(0, Call("ngram", self.trace_source, tokens, parents, path, probs_of(p[rows], tokens),
                                    next_p=float(p[base + best * m + accept_len - 1 if best >= 0 else 0, nxt]),
                                    detail={"window": [list(r) for r in self.rows], "new_row": new_row}))
