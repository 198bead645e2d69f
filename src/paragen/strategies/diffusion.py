"""``diffusion``: masked-diffusion decoding (LLaDA, Nie et al. 2025; Dream, Ye et al. 2025;
Fast-dLLM, Wu et al. 2025).

The canvas is the prompt followed by mask tokens. Blocks of ``block_length`` masks are
denoised left to right (LLaDA's semi-autoregressive remasking). Each step is one model
call over the current block: ``propose`` draws a candidate token and a score for every
still-masked position, ``select`` picks the positions the commit rule keeps, and
``commit`` writes them (a committed token is never re-masked) and returns the newly
completed left part of the block, so the driver streams tokens in order (a step may
return none).

Scores lie in [0, 1], higher commits first. With p the model's distribution at a masked
position (softmax at temperature 1, mask logit removed) and x its candidate token:

- ``low_confidence``: p(x) (LLaDA low-confidence remasking; Dream ``maskgit_plus``)
- ``margin``: p(top-1) - p(top-2) (Dream ``topk_margin``)
- ``entropy``: 1 - H(p) / log V (Dream ``entropy``, normalised to [0, 1])
- ``random``: uniform noise (LLaDA random remasking; ``fixed`` rule only)

Commit rules, over the m still-masked positions of the block, scores s_1 >= ... >= s_m
(ties: the leftmost position first); every rule commits at least one position per call:

- ``fixed``: the top n_k, where call k of the block gets n_k of LLaDA's linear schedule
  (the block's masks split evenly over ``steps`` calls, the remainder on the first calls).
- ``threshold``: **every position with s_i >= threshold, or the top one if none is.**
  So ``threshold > 1`` commits exactly one token per call and ``threshold = 0`` the whole
  block in one call (Fast-dLLM confidence-aware parallel decoding, tau = 0.9).
- ``factor``: the top n for the largest n with (n + 1)(1 - s_n) < factor (Fast-dLLM's
  factor rule).
- ``prefix``: **the longest run of masked positions from the left of the block whose scores
  are all >= threshold, or the leftmost one if its score is below.** Commits stay left to
  right, so the position each call always commits is the one whose left context is clean:
  for a shifted model adapted from an AR model, an AR-like prediction (the other rules may
  commit a confident position far right of the masks first, and the left must then fit it).

Candidates: argmax when greedy, else Gumbel-max over the warped distribution (temperature,
top-k, top-p) in float64, as LLaDA does (float32 noise lowers the effective temperature).

Length: ``max_new_tokens`` masks up front (LLaDA), or with ``grow`` one block at a time,
the model seeing nothing past the current block, until EOS or the budget.

Infilling (``suffix``, given by ``paragen.infill``): the canvas is the prompt, the masks, then
the suffix, which is never masked and which every call sees (full attention); the masks are
the hole, denoised in the same blocks. Needs a fixed hole: not with ``grow``.

Shifted models (``info.shift``; Dream, Fast-dLLM v2) predict position p from the logits at
p - 1, so a call covers the block and the position before it; everything else is the same.

Caches (Fast-dLLM), both approximate for a bidirectional model and refreshed once per
block by a full forward that also serves the block's first call: ``prefix`` keeps the
keys/values of everything left of the block, ``dual`` also those right of it. With
``audit`` every cached call is paired with an uncached one on the same canvas, and
``cache_audit`` in the stats says how far the cached logits were from exact (these extra
calls are counted: use ``audit`` to measure quality, not speed).

Stats (``extra``): ``unmasked_per_call`` is the histogram of tokens unmasked per call (the
parallelism; the driver's ``committed_per_call`` counts tokens released in order),
``blocks``, and with a cache ``cache_refreshes`` and, when auditing, ``cache_audit``;
``lossy`` is always True.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from paragen.errors import UnsupportedOptionError
from paragen.models.base import ModelInfo
from paragen.sampling import SamplingParams, warp
from paragen.strategies.base import DecodeContext, Strategy, feed
from paragen.trace import Call

ORDERINGS = ("low_confidence", "random", "margin", "entropy")
RULES = ("fixed", "threshold", "factor", "prefix")
CACHES = ("none", "prefix", "dual")


@dataclass(frozen=True)
class DenoiseOptions:
    """How each call commits tokens; shared by the diffusion family (``block_diffusion`` too).
    ``steps``: LLaDA's total steps is this times the number of blocks. Scores and rules: see
    the module doc.
    """

    strategy: ClassVar[str] = "diffusion"

    steps: int = field(default=32, metadata={
        "help": "calls per block under rule=fixed, capped at the block's masks; unused by other rules; >= 1"})
    ordering: str = field(default="low_confidence", metadata={
        "help": "score that picks what to commit: low_confidence | random | margin | entropy"})
    rule: str = field(default="threshold", metadata={"help": "how many to commit per call: fixed | threshold | factor | prefix"})
    threshold: float = field(default=0.9, metadata={
        "help": "rule=threshold: commit every masked position scoring >= this (at least one); rule=prefix: the "
                "leading run of such positions (at least the leftmost); >= 0"})
    factor: float = field(default=1.0, metadata={
        "help": "rule=factor (Fast-dLLM f): commit the top n while (n + 1)(1 - s_n) < f; > 0"})

    def __post_init__(self) -> None:
        name = self.strategy
        if self.steps < 1:
            raise UnsupportedOptionError(f"{name}: steps must be >= 1, got {self.steps}")
        if self.ordering not in ORDERINGS:
            raise UnsupportedOptionError(
                f"{name}: ordering must be one of {', '.join(ORDERINGS)}, got '{self.ordering}'"
            )
        if self.rule not in RULES:
            raise UnsupportedOptionError(f"{name}: rule must be one of {', '.join(RULES)}, got '{self.rule}'")
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise UnsupportedOptionError(f"{name}: threshold must be a finite number >= 0, got {self.threshold}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise UnsupportedOptionError(f"{name}: factor must be a finite number > 0, got {self.factor}")
        if self.ordering == "random" and self.rule != "fixed":
            raise UnsupportedOptionError(
                f"{name}: ordering 'random' gives noise, not confidence, so rule '{self.rule}' means nothing with it: "
                "use rule=fixed or another ordering"
            )


@dataclass(frozen=True)
class DiffusionOptions(DenoiseOptions):
    """Settings of ``diffusion``: the commit settings plus blocks, length and caches."""

    block_length: int = field(default=32, metadata={
        "help": "masks denoised together, blocks left to right (semi-autoregressive); >= 1"})
    grow: bool = field(default=False, metadata={
        "help": "add one block of masks at a time until EOS, instead of max_new_tokens up front"})
    cache: str = field(default="none", metadata={"help": "none | prefix | dual (approximate; refreshed once per block)"})
    audit: bool = field(default=False, metadata={
        "help": "also run each cached call uncached and report the deviation (cache_audit); needs a cache"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block_length < 1:
            raise UnsupportedOptionError(f"diffusion: block_length must be >= 1, got {self.block_length}")
        if self.cache not in CACHES:
            raise UnsupportedOptionError(f"diffusion: cache must be one of {', '.join(CACHES)}, got '{self.cache}'")
        if self.audit and self.cache == "none":
            raise UnsupportedOptionError(
                "diffusion: audit compares a cache with no cache: set cache=prefix or cache=dual"
            )


def require_model(info: ModelInfo, strategy: str, attention: str) -> int:
    """The model's mask id, or a clear error if this strategy cannot run the model
    (the API checks the attention kind first; this guards direct construction too)."""
    if info.mask_id is None:
        raise UnsupportedOptionError(
            f"'{strategy}' needs a masked-diffusion model with a mask token; this model has none"
        )
    if info.attention != attention:
        raise UnsupportedOptionError(f"'{strategy}' runs {attention} models; this one is {info.attention}")
    return info.mask_id


def linear_schedule(masks: int, steps: int) -> list[int]:
    """Tokens to commit at each call of a block: ``masks`` split evenly over ``min(steps, masks)``
    calls, the remainder on the first ones (LLaDA's ``get_num_transfer_tokens``)."""
    s = max(1, min(steps, masks))
    return [masks // s + (k < masks % s) for k in range(s)]


def propose(
    logits: torch.Tensor, mask_id: int, sampling: SamplingParams, ordering: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate tokens x [m] and scores s [m] in [0, 1] from m masked positions' logits [m, V]."""
    z = logits.double().clone()
    z[:, mask_id] = float("-inf")  # the mask token is never emitted (a known failure mode)
    if sampling.greedy:
        x = z.argmax(-1)
    else:
        # Gumbel-max: argmax(log q + g), g = -log(-log u), is a sample of q; float64 throughout
        u = torch.rand(z.shape, dtype=torch.float64, generator=generator, device=z.device)
        x = (warp(z, sampling).log() - (-u.log()).log()).argmax(-1)
    p = torch.softmax(z, dim=-1)  # scores use the untempered distribution, as LLaDA does
    if ordering == "low_confidence":
        s = p.gather(-1, x[:, None])[:, 0]
    elif ordering == "margin":
        top = p.topk(2, dim=-1).values
        s = top[:, 0] - top[:, 1]
    elif ordering == "entropy":
        s = 1 - torch.special.entr(p).sum(-1) / math.log(p.shape[-1])
    else:
        s = torch.rand(x.shape, dtype=torch.float64, generator=generator, device=x.device)
    return x, s.clamp(0.0, 1.0)


def select(s: torch.Tensor, opts: DenoiseOptions, n_fixed: int) -> torch.Tensor:
    """Indices into s [m] (the masked positions, left to right) to commit this call: best first, or
    left to right for ``prefix``; never empty."""
    order = torch.sort(s, descending=True, stable=True).indices
    if opts.rule == "fixed":
        n = n_fixed
    elif opts.rule == "threshold":
        n = int((s >= opts.threshold).sum())  # sorted, so exactly the top n
    elif opts.rule == "prefix":  # s is in left-to-right order: the leading run passing the threshold
        return torch.arange(max(1, int((s >= opts.threshold).long().cumprod(0).sum())), device=s.device)
    else:
        # (n + 1)(1 - s_n) grows with n, so the positions passing the test form a prefix
        n_all = torch.arange(1, len(s) + 1, dtype=torch.float64, device=s.device)
        n = int(((n_all + 1) * (1 - s[order]) < opts.factor).long().cumprod(0).sum())
    return order[: max(1, min(n, len(s)))]


class Diffusion(Strategy):
    name = "diffusion"
    Options = DiffusionOptions
    trace_source = "model"
    lossless = False
    supports_sampling = True
    summary = "masked-diffusion denoising, semi-AR blocks, threshold/factor/fixed commits; lossy"
    attention: ClassVar[str] = "bidirectional"

    def __init__(self, ctx: DecodeContext, options: DenoiseOptions, suffix: Sequence[int] = ()) -> None:
        super().__init__(ctx, options)
        self.mask_id = require_model(ctx.target.info, self.name, self.attention)
        self.shift = int(ctx.target.info.shift)  # logits at p predict p + shift
        self.suffix = list(suffix)  # the clean text after the hole (infilling); empty for a continuation
        if self.suffix and getattr(options, "grow", False):
            raise UnsupportedOptionError(f"{self.name}: a hole before a suffix has a fixed number of masks: drop grow")

    def prefill(self, prompt: list[int]) -> None:
        """No model call: the first step opens the first block right after the prompt."""
        o = self.opts
        self.start(prompt, first_block=len(prompt), block_length=o.block_length, grow=o.grow)
        self.cache = self.ctx.target.new_cache(self.ctx.cache_length) if o.cache != "none" else None
        if self.cache is not None:
            self.ctx.extra["cache_refreshes"] = 0
        if o.audit:
            self.ctx.extra["cache_audit"] = dict(calls=0, positions=0, argmax_disagreement=0.0, max_logit_diff=0.0)

    def start(self, prompt: list[int], first_block: int, block_length: int, grow: bool) -> None:
        """State shared with ``block_diffusion``: canvas, masked flags, frontier, block."""
        self.canvas = list(prompt)  # prompt, then committed tokens and masks
        self.origin = len(prompt)  # the first new token's position (traces count positions from it)
        self.masked = [False] * len(prompt)  # flags, not token values: a prompt may hold the mask id
        self.frontier = len(prompt)  # first position not yet returned to the driver
        self.block = (first_block, first_block)  # [start, end) of the block being denoised
        self.block_length, self.grow = block_length, grow
        self.end: int | None = None  # prompt + max_new_tokens, known at the first step
        self.unmasked: Counter[int] = Counter()
        self.ctx.extra.update(blocks=0, unmasked_per_call={}, lossy=True)

    def step(self, budget: int) -> list[int]:
        if self.end is None:
            self.end = len(self.canvas) + budget
            if not self.grow:  # LLaDA: the whole answer is masks from the start
                self.extend(self.end)
                self.canvas += self.suffix  # after the hole, clean, seen by every call
                self.masked += [False] * len(self.suffix)
        if not any(self.masked[self.block[0] : self.block[1]]):
            self.open_block()
        bs, be = self.block
        # 1. propose: one model call over the block, a candidate and a score per masked position
        where = torch.tensor([i for i in range(bs, be) if self.masked[i]], device=self.ctx.target.device)
        logits = self.forward()[where - bs]  # [m, V]
        x, s = propose(logits, self.mask_id, self.ctx.sampling, self.opts.ordering, self.ctx.generator)
        # 2. select: the commit rule decides how many of the best-scored to keep
        keep = select(s, self.opts, self.schedule[min(self.calls, len(self.schedule) - 1)])
        self.calls += 1
        if self.ctx.trace:  # every masked position's candidate and score; the kept ones are unmasked
            o = self.origin
            self.ctx.trace.lap("verify")
            self.ctx.trace.call(0, Call("diffusion", self.trace_source, x.tolist(), positions=(where - o).tolist(),
                                        scores=s.float().tolist(), accepted=keep.tolist(), block=[bs - o, be - o]))
        # 3. commit: write them and hand the driver the completed left part of the block
        return self.commit(where[keep].tolist(), x[keep].tolist())

    def extend(self, n: int) -> None:
        """Append mask tokens up to length n."""
        k = n - len(self.canvas)
        self.canvas, self.masked = self.canvas + [self.mask_id] * k, self.masked + [True] * k

    def open_block(self) -> None:
        bs = self.block[1]
        be = min(bs + self.block_length, self.end)
        if self.grow:
            self.extend(be)
        self.block = (bs, be)
        self.schedule = linear_schedule(sum(self.masked[bs:be]), self.opts.steps)
        self.calls, self.refresh = 0, True
        self.ctx.extra["blocks"] += 1

    def commit(self, positions: list[int], tokens: list[int]) -> list[int]:
        for i, t in zip(positions, tokens):
            self.canvas[i], self.masked[i] = t, False
        self.unmasked[len(positions)] += 1
        self.ctx.extra["unmasked_per_call"] = dict(sorted(self.unmasked.items()))
        start = self.frontier
        while self.frontier < self.block[1] and not self.masked[self.frontier]:
            self.frontier += 1
        return self.canvas[start : self.frontier]

    def forward(self) -> torch.Tensor:
        """Logits [be - bs, V] predicting the current block, with full bidirectional attention.

        They are the rows of the window [lo, be), lo = bs - shift (a block never starts at 0:
        the prompt is not empty), so the caches keep what lies outside the window.
        """
        (bs, be), c, target, n = self.block, self.canvas, self.ctx.target, len(self.canvas)
        lo, b = bs - self.shift, be - bs
        if self.cache is None:
            return feed(target, None, c, 0)[lo : lo + b]
        w = be - lo
        if self.refresh:
            # A full forward (exact), keeping the keys/values of all but the window. Slots are
            # position-addressed through RoPE, so dual puts the suffix before the window in the cache.
            self.refresh = False
            self.ctx.extra["cache_refreshes"] += 1
            self.cache.truncate(0)
            order = list(range(n)) if self.opts.cache == "prefix" else [*range(lo), *range(be, n), *range(lo, be)]
            logits = feed(target, self.cache, [c[i] for i in order], 0, positions=order)
            first = lo if self.opts.cache == "prefix" else n - w  # where the window's rows start
            self.cache.commit(first)
            return logits[first : first + b]
        if self.opts.cache == "prefix":  # the window and the suffix, over the cached prefix
            logits = feed(target, self.cache, c[lo:], lo)[:b]
        else:  # the window only, over the cached prefix and suffix
            logits = feed(target, self.cache, c[lo:be], lo)[:b]
        if self.opts.audit:
            self.audit(logits)
        return logits

    def audit(self, logits: torch.Tensor) -> None:
        """Compare a cached call's block logits [b, V] with an uncached call on the same canvas."""
        bs, be = self.block
        exact = feed(self.ctx.target, None, self.canvas, 0)[bs - self.shift : be - self.shift]
        m = torch.tensor(self.masked[bs:be], device=logits.device)
        a, e = logits[m].double(), exact[m].double()
        a[:, self.mask_id] = e[:, self.mask_id] = float("-inf")
        rec = self.ctx.extra["cache_audit"]
        n, differ = rec["positions"], int((a.argmax(-1) != e.argmax(-1)).sum())
        rec["calls"] += 1
        rec["positions"] = n + int(m.sum())
        rec["argmax_disagreement"] = (rec["argmax_disagreement"] * n + differ) / max(1, rec["positions"])
        finite = torch.isfinite(e)
        rec["max_logit_diff"] = max(rec["max_logit_diff"], float((a - e)[finite].abs().max()) if finite.any() else 0.0)
