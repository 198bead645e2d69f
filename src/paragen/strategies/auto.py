"""``auto``: the fastest lossless strategy here, chosen while decoding, from costs measured here.

Which strategy pays depends on the model, the hardware, the batch size and the text:
``lookup`` wins on code that repeats, a draft model or heads where they are cheap next to
the target, ``ar`` where every extra token a call feeds costs about a call (a CPU at a large
batch). ``auto`` decides per step, for the whole batch, among the lossless candidates the
models allow: ``ar`` and ``lookup`` always, ``speculative`` and ``tree`` with a draft,
``eagle`` / ``medusa`` / ``hydra`` / ``blockwise`` with heads of their kind.

**Switching is free and exact.** Every candidate continues the same rows: the shared state
(committed tokens, target cache, random generators, the target's newest hidden states) is
handed to whichever steps (``BatchedStrategy.share``); each keeps its own state (draft
caches, drafters) across the steps others take. A draft cache that fell behind catches up
in its next call (the tokens it missed, in one call); the heads read the state of the last
verifying forward, which every candidate returns when heads are present; EAGLE's drafter,
fed every true feature, gets those of the steps others took (``kept_states``). Each step is
a lossless step of its strategy given the same history, so greedy output equals ``ar``'s
token for token, and sampled output is distributed as the target's (the random stream is
not ``ar``'s: a sample equal in law, not the same sample). A seed does not reproduce a sampled
run: which candidate steps follows measured time, and each draws its own way; a fixed
``schedule`` does reproduce it.

**The controller** (``Controller``) estimates each candidate's tokens per second: tokens per
step from its recent steps (``window``), seconds per step from the measured call costs
(``paragen.costs``) corrected by what its steps actually took. ``lookup`` is also scored on
steps it did not take: its copy would-be draft is checked against the tokens committed
after it (free: the copy is a search on the host). ``speculative``'s k is chosen each step
from its acceptance per draft position and the costs. Untried candidates get ``probe``
steps first; afterwards at most one step in ``explore`` tries another candidate (the one
tried longest ago among those not far behind), so exploring costs a bounded share. A later
generation in the same process starts from what the earlier ones learnt at the same costs
(``Learnt``): no probing, and the recent record as a prior that its own steps soon replace.

Stats: ``extra["auto"]``: the segments (strategy, steps, tokens, tokens per call, seconds),
the candidates and the call costs used.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from paragen.costs import CallCosts, batch_bucket, call_costs
from paragen.errors import UnsupportedOptionError
from paragen.strategies.ar import AR
from paragen.strategies.base import BatchedStrategy, DecodeContext, OwnRow
from paragen.strategies.blockwise import Blockwise
from paragen.strategies.counts import add_counts, new_counts
from paragen.strategies.eagle import Eagle
from paragen.strategies.hydra import Hydra
from paragen.strategies.lookup import Lookup
from paragen.strategies.medusa import Medusa
from paragen.strategies.speculative import Speculative
from paragen.strategies.tree import Tree

CANDIDATES: dict[str, type[BatchedStrategy]] = {
    s.name: s for s in (AR, Lookup, Speculative, Tree, Eagle, Medusa, Hydra, Blockwise)}
MAX_K = 8  # the longest chain ``speculative`` drafts under ``auto``
CLOSE = 1.25  # rates within this factor are close (see ``Controller``'s explore_close)


def parse_schedule(text: str) -> list[tuple[str, int]]:
    """``"ar:3,lookup:2"`` -> [("ar", 3), ("lookup", 2)]; a forced plan, cycled."""
    plan = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, steps = part.partition(":")
        if name not in CANDIDATES or not steps.isdigit() or int(steps) < 1:
            raise UnsupportedOptionError(f"auto: schedule entries are NAME:STEPS with NAME one of "
                                         f"{', '.join(CANDIDATES)} and STEPS >= 1, got '{part}'")
        plan.append((name, int(steps)))
    return plan


def parse_names(text: str) -> tuple[str, ...]:
    names = tuple(filter(None, (n.strip() for n in text.split(","))))
    bad = [n for n in names if n not in CANDIDATES]
    if bad:
        raise UnsupportedOptionError(f"auto: unknown candidate {', '.join(bad)}: choose among {', '.join(CANDIDATES)}")
    return names


@dataclass(frozen=True)
class AutoOptions:
    """Settings of ``auto``; each field's help is shown by ``paragen generate --help``."""

    candidates: str = field(default="", metadata={
        "help": "comma-separated strategies to choose among (default: every lossless one the models allow)"})
    window: int = field(default=16, metadata={"help": "recent steps a candidate's estimate is made from; >= 1"})
    explore: int = field(default=16, metadata={
        "help": "at most one step in this many tries a candidate other than the best; >= 2"})
    probe: int = field(default=1, metadata={"help": "steps each untried candidate gets first; >= 1"})
    schedule: str = field(default="", metadata={
        "help": "a fixed plan NAME:STEPS,... (cycled) instead of the controller: to test and show switching"})
    recalibrate: bool = field(default=False, metadata={"help": "measure the call costs again (they are cached on disk)"})

    def __post_init__(self) -> None:
        parse_names(self.candidates)
        parse_schedule(self.schedule)
        if self.window < 1 or self.explore < 2 or self.probe < 1:
            raise UnsupportedOptionError(f"auto: need window >= 1, explore >= 2 and probe >= 1, got "
                                         f"{self.window}, {self.explore}, {self.probe}")

    def names(self) -> tuple[str, ...]:
        return parse_names(self.candidates) or tuple(CANDIDATES)


def candidate_options(name: str) -> Any:
    """Each candidate's options under ``auto``: its defaults, and for ``speculative`` the
    longest chain it may be given (its k is chosen per step)."""
    cls = CANDIDATES[name]
    return cls.Options(k=MAX_K) if cls is Speculative else cls.Options()


def available(names: tuple[str, ...], draft: Any, heads: Any, greedy: bool) -> list[str]:
    """The candidates among ``names`` that the models allow: a draft for those that need one,
    heads of a kind they read for those on heads, sampling for sampled requests."""
    out = []
    for name in names:
        cls = CANDIDATES[name]
        if cls.needs_draft and draft is None:
            continue
        if cls.head_kinds and (heads is None or heads.kind not in cls.head_kinds):
            continue
        if not greedy and not cls.supports_sampling:
            continue
        out.append(name)
    return out


@dataclass
class Learnt:
    """What the controllers of one call-cost key (model, device, dtype, threads, batch bucket)
    learnt in this process, for the next generation to start from instead of probing again:
    each candidate's observed / predicted seconds (a fact of this machine), its recent steps
    and speculative's acceptance per position (facts of recent text: a prior, soon replaced)."""

    ratio: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    chain: tuple[np.ndarray, np.ndarray] | None = None  # speculative's (reached, hits)


# per (call-cost key, tune_k): auto's controllers and the engine's two-candidate ones learn apart
LEARNT: dict[tuple[str, bool], Learnt] = {}


def _model_and_batch(key: str) -> tuple[str, int] | None:
    """A call-cost key's models and batch bucket (``paragen.costs`` ends it in ``|b<bucket>``)."""
    models, sep, batch = key.rpartition("|b")
    return (models, int(batch)) if sep and batch.isdigit() else None


@dataclass
class Estimate:
    """One candidate's recent record: tokens per row and seconds of its last ``window`` steps
    (observed, or for ``lookup``'s unexecuted drafts predicted), and its step-time correction."""

    samples: deque = field(default_factory=deque)
    ratio: float = 1.0  # observed seconds / cost-model seconds, averaged over its steps
    warm: bool = False  # the ratio comes from steps already taken (here or by an earlier generation)
    steps: int = 0  # steps it took
    last: int = -1  # the controller step it last took

    summary: tuple[float, float] | None = None  # (mean tokens, median seconds), kept until the next sample

    def add(self, tokens: float, seconds: float, window: int) -> None:
        self.samples.append((tokens, seconds))
        while len(self.samples) > window:
            self.samples.popleft()
        self.summary = None

    def stats(self) -> tuple[float, float]:
        """(mean tokens, median seconds) of the samples: a step slowed by other work on the
        machine does not condemn a candidate. Computed once per new sample (it is read every step)."""
        if self.summary is None:
            self.summary = (statistics.fmean(t for t, _ in self.samples),
                            max(statistics.median(s for _, s in self.samples), 1e-9))
        return self.summary

    def rate(self) -> float | None:
        """Tokens per row per second, or None with no sample yet."""
        if not self.samples:
            return None
        tokens, seconds = self.stats()
        return tokens / seconds


class Controller:
    """Chooses the candidate of each step (see the module docstring); ``observe`` learns from it.

    The serving engine's speculation policy is this controller too, over two candidates (a
    strategy's drafted step and its plain one): ``tune_k`` False (the strategy keeps its own
    options), and ``explore_close``: explore every this many steps instead while the runner-up
    is within ``CLOSE`` of the best (close costs are uncertain ones, e.g. lookup's bimodal
    match / no match)."""

    def __init__(self, names: list[str], costs: CallCosts, opts: AutoOptions, tune_k: bool = True,
                 explore_close: int | None = None) -> None:
        self.names, self.costs, self.opts = names, costs, opts
        self.tune_k, self.explore_close = tune_k, explore_close
        self.est = {n: Estimate() for n in names}
        # speculative: decayed counts of (reached, accepted) per draft position
        self.reached, self.hits = np.zeros(MAX_K), np.zeros(MAX_K)
        self.plan = parse_schedule(opts.schedule)
        self.lookup_share = 1.0  # rows with a lookup draft this step (``Auto`` says, before choosing)
        self._k_cache: tuple[tuple, tuple[int, float]] | None = None
        self.steps = 0
        self.since_explore = 0
        self.recall()

    def recall(self) -> None:
        """Start from what earlier generations here learnt at these costs (see ``Learnt``); a
        candidate never stepped at this batch size starts from its ratio at the nearest one
        (a drafter's cost beyond the target's calls, which the cost model does not see, grows
        with the batch as the target's does: a first step at 1.0 would look far too cheap)."""
        self.learnt = LEARNT.setdefault((self.costs.key, self.tune_k), Learnt())
        here = _model_and_batch(self.costs.key)
        others = sorted(((abs(there[1] - here[1]), learnt) for (key, tune), learnt in LEARNT.items()
                         if tune == self.tune_k and key != self.costs.key and here
                         and (there := _model_and_batch(key)) and there[0] == here[0]), key=lambda pair: pair[0])
        for n, est in self.est.items():
            nearest = next((learnt.ratio[n] for _, learnt in others if n in learnt.ratio), None)
            if n in self.learnt.ratio:
                est.ratio, est.warm = self.learnt.ratio[n], True
            elif nearest is not None:
                est.ratio = nearest
            if self.learnt.samples.get(n):
                est.samples, est.summary = deque(self.learnt.samples[n]), None
        if self.learnt.chain is not None:
            self.reached, self.hits = (a.copy() for a in self.learnt.chain)

    # -- what a step costs, by the cost model
    def predicted(self, name: str, fed: int, drafted_calls: int) -> float:
        c = self.costs
        seconds = c.target_call(fed)
        if name == "speculative":
            seconds += drafted_calls * c.draft_call(1)
        elif name in ("medusa", "blockwise") and c.heads is not None:
            seconds += c.heads
        return seconds

    def acceptance(self) -> np.ndarray:
        """speculative's acceptance at each draft position given the ones before (prior 0.5 of weight 2)."""
        return (self.hits + 1.0) / (self.reached + 2.0)

    def speculative_k(self) -> tuple[int, float]:
        """The k with the most expected tokens per second, and that rate (cost model x ratio);
        computed again only after speculative's acceptance or ratio moved."""
        key = (self.est["speculative"].ratio, self.hits.sum(), self.reached.sum(), self.costs.key)
        if self._k_cache is None or self._k_cache[0] != key:
            self._k_cache = (key, self._speculative_k())
        return self._k_cache[1]

    def _speculative_k(self) -> tuple[int, float]:
        a = np.cumprod(self.acceptance())
        ratio = self.est["speculative"].ratio
        best = max(range(1, MAX_K + 1),
                   key=lambda k: (1 + a[:k].sum()) / self.predicted("speculative", k + 1, k))
        return best, (1 + a[:best].sum()) / (ratio * self.predicted("speculative", best + 1, best))

    def rate(self, name: str) -> float | None:
        if name == "speculative" and self.tune_k and self.est[name].samples:
            return self.speculative_k()[1]
        if name == "lookup":
            return self.lookup_rate()
        return self.est[name].rate()

    def lookup_rate(self) -> float | None:
        """lookup's samples are of steps with a draft; this step ``lookup_share`` of the rows
        have one (known before choosing), and a row without one gets one token for a plain call."""
        est, share = self.est["lookup"], self.lookup_share
        if not est.samples or share == 0:
            return None if share else 1.0 / (est.ratio * self.predicted("ar", 1, 0))
        tokens, seconds = est.stats()
        return (share * tokens + 1 - share) / seconds

    def choose(self) -> str:
        self.steps += 1
        if self.plan:
            return self._planned()
        # probe what has no record yet (lookup gets one from the steps it is scored on; it is
        # tried first when it has a draft)
        untried = [n for n in self.names if self.est[n].steps < self.opts.probe and not self.est[n].samples
                   and (n != "lookup" or self.lookup_share > 0)]
        if untried:
            return untried[0]
        rates = {n: r for n in self.names if (r := self.rate(n)) is not None}
        best = max(rates, key=rates.get)
        self.since_explore += 1
        every = self.opts.explore
        if self.explore_close and any(n != best and r * CLOSE >= rates[best] for n, r in rates.items()):
            every = self.explore_close
        if self.since_explore >= every:
            # the candidate tried longest ago among those within 2x of the best (lookup is
            # scored every step without running: it needs no trial)
            near = [n for n in self.names if n not in (best, "lookup") and rates.get(n, 0) >= rates[best] / 2]
            if near:
                self.since_explore = 0
                return min(near, key=lambda n: self.est[n].last)
        return best

    def _planned(self) -> str:
        cycle = sum(s for _, s in self.plan)
        at = (self.steps - 1) % cycle
        for name, steps in self.plan:
            if at < steps:
                return name if name in self.est else "ar"  # a planned candidate the models lack: ar
            at -= steps
        raise AssertionError("unreachable")

    def observe(self, name: str, tokens: float, seconds: float, fed: int, drafted_calls: int) -> None:
        est = self.est[name]
        predicted = self.predicted(name, fed, drafted_calls)
        first = est.steps == 0 and not est.warm  # a first step pays one-off costs (allocations): not learnt from
        if not first:
            est.ratio = 0.8 * est.ratio + 0.2 * seconds / predicted if est.warm else seconds / predicted
            est.warm = True
            self.learnt.ratio[name] = est.ratio
        est.steps += 1
        est.last = self.steps
        est.add(tokens, est.ratio * predicted if first else seconds, self.opts.window)
        self.learnt.samples[name] = list(est.samples)

    def recost(self, costs: CallCosts) -> None:
        """The batch crossed into another size bucket: its costs, and what was learnt there."""
        self.costs = costs
        self.recall()

    def observe_chain(self, k: int, accepted: list[int]) -> None:
        """speculative's rows drafted k and accepted ``accepted`` each: position i was reached
        by a row that accepted i before it, and accepted if it accepted more than i."""
        self.reached *= 0.97
        self.hits *= 0.97
        for a in accepted:
            reach = min(a + 1, k)
            self.reached[:reach] += 1
            self.hits[: min(a, k)] += 1
        self.learnt.chain = (self.reached.copy(), self.hits.copy())

    def observe_lookup(self, tokens: float, fed: int) -> None:
        """A would-be lookup step: its seconds from the cost model and lookup's own correction."""
        est = self.est["lookup"]
        est.add(tokens, est.ratio * self.predicted("lookup", fed, 0), self.opts.window)
        self.learnt.samples["lookup"] = list(est.samples)


@dataclass
class AutoRow(OwnRow):
    shadow: tuple[int, list[int]] | None = None  # the row's pending lookup draft: (start, tokens)


class Auto(BatchedStrategy):
    name = "auto"
    Options = AutoOptions
    summary = "picks the fastest lossless strategy per step from call costs measured here and acceptance seen so far"
    takes_draft = True  # a draft and heads are optional: they add candidates
    takes_heads: ClassVar[tuple[str, ...]] = ("eagle", "medusa", "blockwise", "hydra")  # built-in heads, preferred first

    @classmethod
    def slack(cls, o: AutoOptions) -> int:
        return max(CANDIDATES[n].slack(candidate_options(n)) for n in o.names())

    @classmethod
    def call_tokens(cls, o: AutoOptions) -> int:
        return max(CANDIDATES[n].call_tokens(candidate_options(n)) for n in o.names())

    def __init__(self, ctx: DecodeContext, options: AutoOptions) -> None:
        super().__init__(ctx, options)
        names = available(options.names(), ctx.draft, ctx.heads, ctx.sampling.greedy)
        if not names:
            raise UnsupportedOptionError(f"auto: none of the candidates {options.candidates} runs on these models "
                                         "(a draft or heads of their kind are missing)")
        self.cands = {n: CANDIDATES[n](ctx, candidate_options(n)) for n in names}
        # With heads among the candidates every candidate's verifying forward returns the
        # hidden states, so the heads read the newest one whichever strategy stepped last.
        self.reads_hidden = any(c.reads_hidden for c in self.cands.values())
        for c in self.cands.values():
            c.reads_hidden = self.reads_hidden

    def prefill_rows(self, prompts: list[list[int]]) -> None:
        self.calibration = 0.0
        self.costs = self._call_costs(len(prompts), refresh=self.opts.recalibrate)
        states = self.prefill_shared(prompts)
        self.prepare_rows(states)
        for c in self.cands.values():
            c.share(self)
            c.prepare_rows(states)
        self.controller = Controller(list(self.cands), self.costs, self.opts)

    def _call_costs(self, batch: int, refresh: bool = False) -> CallCosts:
        ctx, t0 = self.ctx, time.perf_counter()
        costs = call_costs(ctx.target.model, batch, ctx.draft.model if ctx.draft else None, ctx.heads, refresh=refresh)
        self.calibration += time.perf_counter() - t0  # measuring, or reading the cache
        return costs

    def new_row(self, b: int, states: torch.Tensor | None) -> AutoRow:
        return AutoRow({"segments": []})

    def step_rows(self, budgets: list[int]) -> list[list[int]]:
        ctx, ctl = self.ctx, self.controller
        if batch_bucket(len(self.seqs)) != self.costs.batch:  # rows left or joined: cost the batch it is now
            self.costs = self._call_costs(len(self.seqs))
            ctl.recost(self.costs)
        drafts = self._lookup_drafts(budgets)
        ctl.lookup_share = sum(map(bool, drafts)) / len(drafts)
        name = ctl.choose()
        cand = self.cands[name]
        if name == "lookup":  # lookup runs itself: scored on its own step
            for own in self.own:
                own.shadow = None
        else:  # the rows' would-be drafts, scored once the tokens after them are committed
            for own, row, d in zip(self.own, self.rows, drafts):
                own.shadow = own.shadow or ((len(row.seq), d) if d else None)
            if "lookup" in self.cands:
                self.cands["lookup"].given = None  # drafts of this step only
        if name == "speculative":
            k = ctl.speculative_k()[0]
            for own in cand.own:
                own.k = k
        cand.share(self)
        before = (ctx.target.calls, ctx.drafting_calls())
        t0 = time.perf_counter()
        committed = cand.step_rows(budgets)
        seconds = time.perf_counter() - t0
        self.share(cand)  # ``hidden`` is a new tensor after a step
        drafted = ctx.drafting_calls() - before[1]
        # lookup is scored on the rows that had a draft: what a step with drafts gives
        rows = [len(c) for c, d in zip(committed, drafts) if d or name != "lookup"]
        if rows:
            ctl.observe(name, sum(rows) / len(rows), seconds, ctx.target.fed, drafted)
        if name == "speculative":
            ctl.observe_chain(cand.own[0].k, [len(c) - 1 for c in committed])
        self._feed_dormant_eagles(cand)
        self._score_shadows()
        for own, c in zip(self.own, committed):
            self._record(own.stats, name, len(c), ctx.target.calls - before[0], seconds)
        return committed

    def _lookup_drafts(self, budgets: list[int]) -> list[list[int]]:
        """Each row's lookup draft at this step ([] for none, or when lookup is no candidate):
        whether lookup has anything to propose now is known before choosing, for free (if lookup
        steps, it takes these drafts instead of searching again)."""
        lookup = self.cands.get("lookup")
        if lookup is None:
            return [[] for _ in budgets]
        lookup.share(self)
        lookup.given = lookup.drafts(budgets)
        return lookup.given

    def _score_shadows(self) -> None:
        """Score the rows' lookup drafts whose outcome is known: the tokens a lookup step
        would have committed there (its accepted copy and the target's next token)."""
        done, fed = [], 1
        for own, row in zip(self.own, self.rows):
            if own.shadow is None:
                continue
            start, draft = own.shadow
            actual = row.seq[start:]
            matched = 0
            while matched < len(draft) and matched < len(actual) and draft[matched] == actual[matched]:
                matched += 1
            if matched == len(draft) or matched < len(actual):  # all of it, or a miss: decided
                done.append(min(matched + 1, len(draft) + 1))
                fed = max(fed, 1 + len(draft))
                own.shadow = None
        if done:
            self.controller.observe_lookup(sum(done) / len(done), fed)

    def _feed_dormant_eagles(self, stepped: BatchedStrategy) -> None:
        """EAGLE's drafters are fed every committed position's true feature: those of a step
        another candidate took come from its verifying forward."""
        kept, stepped.kept_states = stepped.kept_states, None
        eagle = self.cands.get("eagle")
        if eagle is None or eagle is stepped or kept is None:
            return
        states, rows = kept
        for b, (own, idx) in enumerate(zip(eagle.own, rows)):
            own.drafter.queue(states[b, idx])

    def _record(self, extra: dict[str, Any], name: str, tokens: int, calls: int, seconds: float) -> None:
        segments = extra["segments"]
        if not segments or segments[-1]["strategy"] != name:
            segments.append({"strategy": name, "steps": 0, "tokens": 0, "calls": 0, "seconds": 0.0})
        seg = segments[-1]
        seg["steps"] += 1
        seg["tokens"] += tokens
        seg["calls"] += calls
        seg["seconds"] += seconds

    def select(self, rows: list[int]) -> None:
        super().select(rows)
        for c in self.cands.values():
            c.select_own(rows)

    def join(self, other: BatchedStrategy) -> None:
        super().join(other)
        for name, c in self.cands.items():
            c.join_own(other.cands[name])

    def row_extra(self, row: int) -> dict[str, Any]:
        segments = [{**s, "tokens_per_call": round(s["tokens"] / s["calls"], 3) if s["calls"] else 0.0,
                     "seconds": round(s["seconds"], 4)} for s in self.own[row].stats["segments"]]
        counts = new_counts()  # every candidate's draft counts, summed: what all the steps verified
        for c in self.cands.values():
            add_counts(counts, c.own[row].stats)
        return {**counts, "auto": {"segments": segments, "candidates": list(self.cands),
                         "costs": {"batch": self.costs.batch, "target": self.costs.target, "draft": self.costs.draft,
                                   "heads": self.costs.heads, "measured_seconds": round(self.costs.seconds, 3)},
                         "calibration_seconds": round(self.calibration, 3)}}
