"""The serving engine: a running batch that requests join at the next step and leave at the
step they finish (iteration-level scheduling, Orca; vLLM's continuous batching).

It holds no decoding rule of its own: rows run the same batched strategies that
``paragen.generate(model, [prompts])`` runs, stopped, detokenised and counted by the
driver's ``Row``. What it adds is when rows join and leave:

- **Groups.** Rows batch with rows of the same strategy, options, draft, heads and sampling
  settings (one strategy instance, one forward per step). A strategy that takes one prompt
  (``jacobi``, ``lookahead``, the diffusion ones) and any model whose cache has one length
  (the ``hf`` backend) runs as groups of one. Groups take turns, one step each, round robin:
  every running stream advances at the same pace whatever its group's size, and a group
  of one is never starved by a large one.
- **Admission.** Waiting requests join in arrival order between steps while the running
  rows stay within ``max_batch`` and the cache token budget (every row holds cache slots for
  its prompt + max_tokens + the strategy's drafts); joiners of one group are prefilled
  together into a batch of their own, then appended to the running one
  (``BatchedStrategy.join``). A step admits at most ``prefill_tokens`` prompt tokens (at least
  one request), so a burst of long prompts is spread over several steps.
- **Per-row settings.** Budget, stop strings and a random generator per row, seeded from
  the request's seed: a seeded request draws exactly what it would alone.
- **Speculation under load.** For a greedy group of a draft-and-verify strategy the engine
  measures seconds per committed token with drafting and without (a step asked for one
  token per row drafts nothing: the target's own next token, an ``ar`` step of the same
  rows, lossless either way) at each batch-size bucket, and drafts only while drafting is
  faster, re-trying the other choice every ``EXPLORE_EVERY`` steps: ``auto``'s controller
  over those two choices (``SpeculationPolicy``). Sampled groups always draft: a seeded
  request must draw the same numbers alone or in a crowd. An ``auto`` group chooses among
  all its candidates itself, with the same controller.

``step()`` is called by one thread (the server's decoder thread); ``add`` and ``cancel``
from any thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from paragen.cache import OneRowCache
from paragen.costs import batch_bucket, call_costs
from paragen.driver import Generation, Row
from paragen.errors import ParagenError
from paragen.models.base import Model
from paragen.request import Request, context, row_generator
from paragen.strategies.auto import AutoOptions, Controller
from paragen.strategies.base import BatchedStrategy, ChainStrategy, DecodeContext, Strategy
from paragen.strategies.drafter import TreeDraftStrategy

log = logging.getLogger("paragen.serve")

# Re-measure the choice not taken every this many steps of a group. A drafting step after many
# plain ones also feeds the draft model the tokens it missed and drafts k levels: at batch 16
# it costs ~3 plain steps, so exploring one step in 16 lost ~12% of batched speed (measured
# with scripts/serve_load.py); one in 64 loses ~3% and still follows a change of load in
# seconds.
EXPLORE_EVERY = 64
# ... and every this many steps while the two rates are within a factor CLOSE (auto's) of each other.
EXPLORE_CLOSE = 8
# Steps per choice and batch-size bucket that its rate is measured over.
WINDOW = 8


class CacheBudgetError(ParagenError):
    """A request needs more cache slots than the engine's whole token budget."""


@dataclass
class Entry:
    """One request in the engine: its checked request, its row state, and where its events go.

    ``emit(kind, value)`` receives, in order: ``("piece", str)`` any number of times, then one of
    ``("done", Generation)``, ``("timeout", None)``, ``("cancelled", None)``, ``("error", ParagenError)``
    (bad settings found at prefill) or ``("failed", Exception)`` (a bug).
    """

    request: Request
    emit: Callable[[str, Any], None]
    deadline: float = float("inf")  # time.monotonic() after which the row leaves at the next step
    id: int = field(default_factory=itertools.count().__next__)
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    row: Row | None = None
    started: float = 0.0
    steps: int = 0
    drafted: int = 0  # steps of this row that drafted

    @property
    def need(self) -> int:
        """Cache slots this row holds while it runs."""
        return self.request.cache_length


class SpeculationPolicy:
    """Draft or not, per step of a group: ``auto``'s controller (``paragen.strategies.auto``)
    over two candidates, the strategy's drafted step and its plain step (``"ar"``: budgets of
    one, the target's own next token), one controller per batch-size bucket. Its rates are the
    tokens of the recent steps over their median seconds, its priors the call costs measured
    here (``paragen.costs``): so ``auto`` and the engine choose by one mechanism.

    One policy per (strategy, options, draft, heads, sampling), kept by the engine across the
    groups that come and go (a group of one lives for one request), so what it learned serves
    the next request.
    """

    def __init__(self, request: Request, model: Model) -> None:
        self.name, self.model, self.request = request.strategy.name, model, request
        self.controllers: dict[int, Controller] = {}

    def controller(self, rows: int) -> Controller:
        bucket = batch_bucket(rows)
        if bucket not in self.controllers:
            costs = call_costs(self.model, bucket, self.request.draft, self.request.heads)
            self.controllers[bucket] = Controller(["ar", self.name], costs, AutoOptions(window=WINDOW, explore=EXPLORE_EVERY),
                                                  tune_k=False, explore_close=EXPLORE_CLOSE)
        return self.controllers[bucket]

    def choose(self, rows: int) -> bool:
        """Whether this step drafts."""
        return self.controller(rows).choose() != "ar"

    def record(self, rows: int, drafted: bool, seconds: float, tokens: int, fed: int, drafting_calls: int) -> None:
        """A step's outcome: ``tokens`` committed over all rows, ``fed`` tokens per row in its target call."""
        self.controller(rows).observe(self.name if drafted else "ar", tokens / rows, seconds, fed, drafting_calls)


@dataclass
class Group:
    """Rows that step together: one strategy instance over them, in the order of ``entries``."""

    key: Any
    request: Request  # the first member's (strategy, options, sampling, draft, heads are the group's)
    ctx: DecodeContext
    strategy: Strategy
    entries: list[Entry]
    policy: SpeculationPolicy | None

    @property
    def draftable(self) -> bool:
        return self.policy is not None


class Engine:
    """A running batch over ``model``: ``add`` requests, ``step`` until idle, ``cancel`` any time."""

    def __init__(self, model: Model, max_batch: int = 16, cache_tokens: int | None = None, prefill_tokens: int = 2048,
                 max_waiting: int = 64, speculation: bool = True) -> None:
        if max_batch < 1 or prefill_tokens < 1 or max_waiting < 0:
            raise ValueError("max_batch and prefill_tokens must be >= 1 and max_waiting >= 0")
        self.model, self.max_batch, self.prefill_tokens, self.max_waiting = model, max_batch, prefill_tokens, max_waiting
        self.cache_tokens = cache_tokens if cache_tokens is not None else max_batch * model.info.max_length
        self.speculation = speculation
        self.one_row = isinstance(model.new_cache(batch=1, max_length=1), OneRowCache)
        self.groups: list[Group] = []
        self.waiting: deque[Entry] = deque()
        self._lock = threading.Lock()
        self._turn = 0
        self.policies: dict[Any, SpeculationPolicy] = {}  # per (strategy, options, draft, heads, sampling)
        self.on_step: Callable[[Group, int, bool], None] | None = None  # (group, rows, drafted): metrics

    # ------------------------------------------------------------ from any thread

    def add(self, entry: Entry) -> None:
        """Queue a request; it joins the running batch at a coming step. ``QueueFull`` when
        ``max_waiting`` wait already; ``CacheBudgetError`` when it could never fit."""
        if entry.need > self.cache_tokens:
            raise CacheBudgetError(f"this request needs {entry.need} cache slots (prompt + max_tokens + drafts), more "
                                   f"than the server's whole cache budget of {self.cache_tokens}: ask for fewer tokens")
        with self._lock:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are waiting already")
            self.waiting.append(entry)

    def cancel(self, entry: Entry) -> bool:
        """Stop a request: dropped from the queue now (True), or from its batch at the next step."""
        entry.cancelled = True
        with self._lock:
            try:
                self.waiting.remove(entry)
            except ValueError:
                return False
        return True

    @property
    def running(self) -> int:
        return sum(len(g.entries) for g in self.groups)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def idle(self) -> bool:
        return not self.groups and not self.waiting

    # ------------------------------------------------------------ the decoder thread

    def step(self) -> None:
        """Admit waiting requests, then one decoding step of the next group in turn."""
        self._drop_ended()
        self._admit()
        if not self.groups:
            return
        self._turn %= len(self.groups)
        group = self.groups[self._turn]
        self._turn += 1
        try:
            with torch.inference_mode():
                self._step(group)
        except Exception as e:  # a bug: the group's requests fail, the others keep running
            log.exception("decode step failed")
            self.groups.remove(group)
            for entry in group.entries:
                entry.emit("failed", e)

    def _step(self, group: Group) -> None:
        entries, strategy, ctx = group.entries, group.strategy, group.ctx
        draft = group.policy.choose(len(entries)) if group.draftable else True
        # a step asked for one token per row drafts nothing: the target's own next token (lossless)
        budgets = [e.row.budget if draft else 1 for e in entries]
        calls = ctx.target.calls, ctx.drafting_calls()
        t0 = time.perf_counter()
        committed = strategy.step_rows(budgets)
        seconds = time.perf_counter() - t0
        target_calls = ctx.target.calls - calls[0]
        draft_calls = ctx.drafting_calls() - calls[1]
        if group.draftable:
            group.policy.record(len(entries), draft, seconds, sum(map(len, committed)), ctx.target.fed, draft_calls)
        if self.on_step:
            self.on_step(group, len(entries), draft)
        staying = []
        for i, (entry, tokens) in enumerate(zip(entries, committed)):
            row = entry.row
            row.stats.target_calls += target_calls
            row.stats.draft_calls += draft_calls
            entry.steps += 1
            entry.drafted += int(draft)
            piece = row.add(tokens)
            if piece:
                entry.emit("piece", piece)
            if row.done:
                entry.emit("done", self._finish(group, i, entry))
            else:
                staying.append(i)
        self._keep(group, staying)

    def _finish(self, group: Group, i: int, entry: Entry) -> Generation:
        row = entry.row
        row.stats.seconds = time.perf_counter() - entry.started
        row.stats.extra = {**group.ctx.extra, **group.strategy.row_extra(i)}
        if group.draftable:
            row.stats.extra["drafted_steps"] = entry.drafted  # the speculation policy's choice, per step
        return row.generation()

    def _keep(self, group: Group, staying: list[int]) -> None:
        """Keep these rows of a group; a group with none left ends (its caches are freed)."""
        if len(staying) == len(group.entries):
            return
        if not staying:
            self.groups.remove(group)
            return
        group.strategy.select(staying)
        group.entries = [group.entries[i] for i in staying]

    def _drop_ended(self) -> None:
        """Rows whose client left or whose deadline passed leave their batch before the step."""
        now = time.monotonic()
        for group in list(self.groups):
            staying = []
            for i, entry in enumerate(group.entries):
                if entry.cancelled or now > entry.deadline:  # a client gone after its deadline timed out
                    entry.emit("timeout" if now > entry.deadline else "cancelled", None)
                else:
                    staying.append(i)
            self._keep(group, staying)
        with self._lock:
            for entry in [e for e in self.waiting if now > e.deadline]:
                self.waiting.remove(entry)
                entry.emit("timeout", None)

    def _admit(self) -> None:
        """Move waiting requests into the running batch, in arrival order, within the limits."""
        rows = self.running
        used = sum(e.need for g in self.groups for e in g.entries)
        joining: dict[Any, list[Entry]] = {}
        tokens = 0
        with self._lock:
            while self.waiting and rows < self.max_batch:
                entry = self.waiting[0]
                prompt = len(entry.request.prompts[0])
                if used + entry.need > self.cache_tokens or (tokens and tokens + prompt > self.prefill_tokens):
                    break  # first in, first served: the head waits for room rather than being overtaken
                self.waiting.popleft()
                joining.setdefault(self._key(entry), []).append(entry)
                rows, used, tokens = rows + 1, used + entry.need, tokens + prompt
        for key, entries in joining.items():
            try:
                with torch.inference_mode():
                    self._join(key, entries)
            except ParagenError as e:  # a setting only the strategy's prefill can check (e.g. more heads than trained)
                for entry in entries:
                    entry.emit("error", e)
            except Exception as e:
                log.exception("prefill failed")
                for entry in entries:
                    entry.emit("failed", e)

    def _key(self, entry: Entry) -> Any:
        if not entry.request.strategy.batched or self.one_row:
            return ("alone", entry.id)
        return self._policy_key(entry.request)

    @staticmethod
    def _policy_key(r: Request) -> Any:
        return (r.strategy.name, r.options, id(r.draft), id(r.heads), r.sampling)

    def _join(self, key: Any, entries: list[Entry]) -> None:
        """Prefill ``entries`` as a batch of their own, then append it to their group's running batch."""
        group = next((g for g in self.groups if g.key == key), None)
        first = entries[0].request
        need = max(e.need for e in entries)
        # caches come in power-of-two lengths (never past what a row can need), so that most joins
        # need no widening of the running cache (``KVCache.extend`` widens the shorter side)
        length = max(need, group.strategy.cache.max_length if group else 0)
        cap = self.model.info.max_length + first.strategy.slack(first.options)
        length = max(length, min(1 << (length - 1).bit_length(), cap))
        generators = [row_generator(self.model, e.request.seeds[0]) for e in entries]
        ctx = context(self.model, first, generators, length)
        if group is not None:  # share the group's counted models, so its call counts stay one count
            ctx = dataclasses.replace(ctx, target=group.ctx.target, draft=group.ctx.draft)
        strategy = first.strategy(ctx, first.options)
        now = time.perf_counter()
        for e in entries:
            e.row = Row(first.strategy.name, e.request.max_new_tokens, self.model.tokenizer, self.model.info.eos_ids,
                        e.request.stop)
            e.started = now
        calls = ctx.target.calls
        strategy.prefill_rows([e.request.prompts[0] for e in entries])
        for e in entries:
            e.row.stats.prefill_calls = ctx.target.calls - calls
        if group is None:
            draftable = (self.speculation and first.sampling.greedy
                         and issubclass(first.strategy, (ChainStrategy, TreeDraftStrategy)) and first.strategy.name != "ar")
            policy = (self.policies.setdefault(self._policy_key(first), SpeculationPolicy(first, self.model))
                      if draftable else None)
            self.groups.append(Group(key, first, ctx, strategy, list(entries), policy))
            return
        assert isinstance(group.strategy, BatchedStrategy)
        group.strategy.join(strategy)
        group.entries += entries


class QueueFull(Exception):
    """``max_waiting`` requests wait already."""
