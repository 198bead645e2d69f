"""What every strategy shares: its context, the Strategy interface, and a counted model.

A strategy keeps the committed sequence ``seq`` (prompt included) and a cache per model
holding the keys/values of ``seq[:-1]``: the newest token is always fed by the next
call. ``prefill`` fills the caches; each ``step`` makes one iteration
(propose -> verify -> commit) and returns the tokens it committed, left to right
(draft-and-verify strategies commit at least one; a diffusion step may finish none).

Batches: the driver calls ``prefill_rows`` / ``step_rows`` / ``select``. A strategy that
decodes one prompt at a time gets them for free (a batch of one); a ``ChainStrategy``
(``ar``, ``speculative``, ``lookup``, ``blockwise``) or a ``TreeDraftStrategy`` (``tree``,
``spectr``, ``medusa``, ``hydra``, ``eagle``: a token tree per row), both ``BatchedStrategy``,
decodes many rows at once, each row with its own draft and accepted length, over caches
with per-row lengths (``paragen.cache``). Their tensors live on the model's device; a chain
step's only device-to-host copy is the committed tokens (with each row's accept length, in
the same tensor), while tree steps grow and walk their trees on the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from paragen.models import device_of
from paragen.models.base import Model
from paragen.sampling import SamplingParams, sample_rows, warp
from paragen.strategies.counts import count_step, new_counts
from paragen.trace import Call, Recorder, chain_parents, probs_of
from paragen.verify import verify_chains

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
        self.device = device_of(model)
        self.calls = 0
        self.fed = 0  # tokens per row the last call fed (what a call's cost depends on)

    def __call__(self, tokens, positions, cache=None, mask=None, return_hidden=False):
        self.calls += 1
        self.fed = tokens.shape[-1]
        if return_hidden:
            return self.model(tokens, positions, cache=cache, mask=mask, return_hidden=True)
        return self.model(tokens, positions, cache=cache, mask=mask)

    def new_cache(self, max_length: int, batch: int = 1) -> Any:
        return self.model.new_cache(batch=batch, max_length=max_length)


@dataclass
class DecodeContext:
    """Everything a strategy may use; built once per generation by the API."""

    target: CountedModel
    sampling: SamplingParams
    generator: torch.Generator  # the one generator of a strategy that decodes one prompt at a time
    cache_length: int  # slots to allocate: prompt + max_new_tokens + room for pending drafts
    draft: CountedModel | None = None
    heads: Any = None  # paragen.heads.Heads bound to the target, for strategies that ride on heads
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific statistics (batch of one)
    generators: list[torch.Generator] = field(default_factory=list)  # one per prompt, for batched strategies
    trace: Recorder | None = None  # set by generate(..., trace=True): strategies record each call into it

    def drafting_calls(self) -> int:
        """Calls of whatever drafts: the draft model and the prediction heads (or EAGLE drafter)."""
        return (self.draft.calls if self.draft else 0) + getattr(self.heads, "calls", 0)


class Strategy(ABC):
    """One decoding strategy. Subclasses set ``name``, ``Options`` and the capability flags."""

    name: ClassVar[str]
    Options: ClassVar[type]
    needs_draft: ClassVar[bool] = False
    head_kinds: ClassVar[tuple[str, ...]] = ()  # the kinds of prediction heads it runs on (none: needs no heads)
    # Models it uses when given but runs without (``auto``: they add candidates).
    takes_draft: ClassVar[bool] = False
    takes_heads: ClassVar[tuple[str, ...]] = ()  # heads kinds, the built-in heads' preferred first
    supports_sampling: ClassVar[bool] = True
    lossless: ClassVar[bool] = True
    attention: ClassVar[str] = "causal"  # the kind of model it runs (ModelInfo.attention)
    summary: ClassVar[str] = ""
    batched: ClassVar[bool] = False  # decodes a batch of prompts at once (else one prompt per call)
    trace_source: ClassVar[str] = "target"  # what proposes, as a trace names it (paragen.trace.Call.source)

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

    # The driver's interface. A strategy that is not ``batched`` gets a batch of one.
    def prefill_rows(self, prompts: list[list[int]]) -> None:
        """Fill the caches for a batch of prompts."""
        (prompt,) = prompts
        self.prefill(prompt)

    def step_rows(self, budgets: list[int]) -> list[list[int]]:
        """One iteration for every row still in the batch: each row's committed tokens."""
        return [self.step(budgets[0])]

    def select(self, rows: list[int]) -> None:
        """Keep these rows (indices into the current batch, in order); the others finished.
        A batch of one never selects: its last row finishing ends the loop."""
        raise NotImplementedError(f"strategy '{self.name}' decodes one prompt at a time")

    def row_extra(self, row: int) -> dict[str, Any]:
        """Strategy statistics of one row of the current batch."""
        return dict(self.ctx.extra)


def feed(model: CountedModel, cache: Any, tokens: list[int], start: int, mask: torch.Tensor | None = None,
         positions: list[int] | None = None, hidden: bool = False):
    """One forward of ``tokens`` (batch 1) after the cache's committed slots; logits [T, V],
    or (logits [T, V], final-norm hidden states [T, H]) from the same call when ``hidden``.

    Positions are ``start, start+1, ...`` unless given (trees and windows pass their own).
    """
    x = torch.tensor([tokens], device=model.device)
    mask = mask.to(model.device) if mask is not None else None  # masks are built on the host (trees, windows)
    pos = torch.tensor([positions], device=model.device) if positions is not None else \
        torch.arange(start, start + len(tokens), device=model.device)[None]
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


# ---------------------------------------------------------------- batches of chains


def to_device(values: list, device: torch.device) -> torch.Tensor:
    """Host ints as a long tensor on ``device``. non_blocking: the copy is queued behind the
    device's work instead of waiting for it (the loop's only wait is its one device-to-host copy)."""
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)


def pad(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """Token rows of different lengths as one tensor [B, max len], right-padded with token 0
    (what a pad slot computes is never committed: the next write overwrites it)."""
    width = max(map(len, rows))
    return to_device([r + [0] * (width - len(r)) for r in rows], device)


def feed_rows(model: CountedModel, cache: Any, tokens: torch.Tensor, hidden: bool = False):
    """One forward of tokens [B, T] after each row's committed slots: logits [B, T, V], or
    (logits, final-norm hidden states [B, T, H]) when ``hidden``. Row b's tokens sit at
    positions ``cache.rows[b] + t``, and see only their own row."""
    T = tokens.shape[1]
    return model(tokens, cache.slots(T).to(tokens.device), cache=cache, mask=cache.mask(T), return_hidden=hidden)


def prefill_rows(model: CountedModel, cache: Any, seqs: list[list[int]], hidden: bool = False) -> torch.Tensor | None:
    """Write each ``seq[:-1]`` into an empty cache in one call (ragged rows padded). With
    ``hidden``: the final-norm hidden states of that call [B, max len - 1, H] (row b's first
    ``len(seqs[b]) - 1`` are its own), or None when every prompt is one token (no call)."""
    if max(map(len, seqs)) == 1:
        return None
    out = feed_rows(model, cache, pad([s[:-1] for s in seqs], model.device), hidden=hidden)
    cache.commit_rows([len(s) - 1 for s in seqs])
    return out[1] if hidden else None


def catch_up_rows(model: CountedModel, cache: Any, seqs: list[list[int]]) -> torch.Tensor:
    """``catch_up`` for a batch: feed each row the committed tokens its cache lacks, commit
    them, and return the logits of each row's newest token [B, V]."""
    lacks = [s[r:] for s, r in zip(seqs, cache.rows)]
    logits = feed_rows(model, cache, pad(lacks, model.device))
    cache.commit_rows([len(x) for x in lacks])
    if all(len(x) == len(lacks[0]) for x in lacks):
        return logits[:, -1]
    last = to_device([len(x) - 1 for x in lacks], logits.device)
    return logits[torch.arange(len(lacks), device=logits.device), last]


def draw(logits: torch.Tensor, sampling: SamplingParams, generators: list[torch.Generator],
         live: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row from logits [B, V], on their device: (tokens [B], warped probabilities
    [B, V] when sampling, else None). Row b samples with ``generators[b]``, only where ``live[b]``
    (1) when given: a row draws what it would alone, the others take the argmax."""
    if sampling.greedy:
        return logits.argmax(-1), None
    p = warp(logits, sampling)
    return sample_rows(p, generators, live), p


@dataclass
class SharedRow:
    """One row of a batch as every strategy continuing it sees it (``BatchedStrategy.share``)."""

    seq: list[int]  # the committed tokens, prompt included
    generator: torch.Generator  # the row's random stream
    ready: bool  # ``hidden`` holds the row's state (a one-token prompt has none before its first step)


@dataclass
class OwnRow:
    """One row's state that belongs to one strategy: its statistics (``row_extra``). A strategy
    with more per-row state (a drafter, an adaptive k) adds fields in a subclass, so a row's
    state is one object and selecting rows cannot leave a field out of step."""

    stats: dict[str, Any] = field(default_factory=dict)


class BatchedStrategy(Strategy):
    """A strategy that decodes a batch of prompts at once, a batch of one included (one code
    path), over a target cache with per-row lengths. With ``reads_hidden`` (drafts from the
    target's own states, as prediction heads do), ``hidden`` [B, H] holds each row's final-norm
    state at its last accepted position (the one that predicted its newest token).

    The state splits in two. The *shared* state (``rows``: each row's ``SharedRow``; the target
    ``cache`` and ``hidden``) is what any strategy continuing these rows needs; the *own* state
    (``own``: each row's ``OwnRow`` from ``new_row``; caches with per-row lengths named in
    ``row_caches``) is this strategy's. ``prefill_rows`` is ``prefill_shared`` then
    ``prepare_rows``; a strategy that switches between others (``auto``) prefills the shared
    state once, prepares each candidate's own, and hands the shared state to whichever steps
    (``share``). With ``reads_hidden`` set on an instance, any subclass keeps ``hidden`` current,
    and each step leaves the states of the positions it committed in ``kept_states`` (for
    drafters that are fed every true feature, as EAGLE's is, while another strategy runs).
    """

    batched = True
    reads_hidden: ClassVar[bool] = False
    shared: ClassVar[tuple[str, ...]] = ("rows", "cache", "hidden")
    # Own caches with per-row lengths (a draft model's), selected and extended with the rows.
    row_caches: ClassVar[tuple[str, ...]] = ()
    kept_states: tuple[torch.Tensor, list[list[int]]] | None = None  # (states [B, T, H], each row's kept indices)

    @property
    def seqs(self) -> list[list[int]]:
        """Each row's committed tokens (the lists themselves: extending one extends the row)."""
        return [r.seq for r in self.rows]

    @property
    def generators(self) -> list[torch.Generator]:
        return [r.generator for r in self.rows]

    def prefill(self, prompt: list[int]) -> None:
        self.prefill_rows([prompt])

    def step(self, budget: int) -> list[int]:
        return self.step_rows([budget])[0]

    def prefill_rows(self, prompts: list[list[int]]) -> None:
        self.prepare_rows(self.prefill_shared(prompts))

    def prefill_shared(self, prompts: list[list[int]]) -> torch.Tensor | None:
        """Fill the target cache; with ``reads_hidden``, return the prompts' hidden states
        (``prefill_rows``'s) for drafters that read more than the last one."""
        generators = list(self.ctx.generators) or [self.ctx.generator] * len(prompts)
        if len(generators) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts and {len(generators)} generators: give one per row")
        self.rows = [SharedRow(list(p), g, len(p) > 1) for p, g in zip(prompts, generators)]
        self.cache = self.ctx.target.new_cache(self.ctx.cache_length, batch=len(prompts))
        states = prefill_rows(self.ctx.target, self.cache, self.seqs, hidden=self.reads_hidden)
        self.hidden = None
        if states is not None:  # each row's state at seq[-2] (a one-token row's is never read)
            last = to_device([max(len(p) - 2, 0) for p in prompts], states.device)
            self.hidden = states[torch.arange(len(prompts), device=states.device), last]
        self.kept_states = None
        return states

    def prepare_rows(self, states: torch.Tensor | None) -> None:
        """This strategy's own state for the rows (``new_row``; a strategy with a cache of its
        own adds it here); ``states``: the prompts' hidden states from ``prefill_shared``, when read."""
        self.own = [self.new_row(b, states) for b in range(len(self.rows))]

    def new_row(self, b: int, states: torch.Tensor | None) -> OwnRow:
        """Row ``b``'s own state before its first step (``rows[b]`` is its shared state)."""
        return OwnRow()

    def share(self, other: BatchedStrategy) -> None:
        """Take ``other``'s shared state (the same objects): this strategy continues its rows."""
        for name in self.shared:
            setattr(self, name, getattr(other, name))

    def row_extra(self, row: int) -> dict[str, Any]:
        return dict(self.own[row].stats)

    def count(self, depths: list[int], accepts: list[int], nodes: list[int]) -> None:
        """Add one verified step to each row's draft statistics (``paragen.strategies.counts``):
        row b's guesses reached ``depths[b]`` positions, ``accepts[b]`` of them were accepted,
        ``nodes[b]`` guessed tokens were verified. A row that verified none adds nothing."""
        for row, depth, accepted, n in zip(self.own, depths, accepts, nodes):
            if n:
                count_step(row.stats, depth, accepted, n)

    def select(self, rows: list[int]) -> None:
        self.rows = [self.rows[i] for i in rows]
        self.cache.select(rows)
        if self.hidden is not None:
            self.hidden = self.hidden[to_device(rows, self.hidden.device)]
        self.select_own(rows)

    def select_own(self, rows: list[int]) -> None:
        self.own = [self.own[i] for i in rows]
        for name in self.row_caches:
            getattr(self, name).select(rows)

    def join(self, other: BatchedStrategy) -> None:
        """Append ``other``'s rows after this batch's: rows joining a running batch between
        steps (the serving engine's continuous batching). ``other`` is a prefilled instance of
        the same class and options, on the same models; afterwards it must not be used."""
        if type(other) is not type(self) or other.opts != self.opts:
            raise ValueError(f"only rows of the same strategy and options join a batch: {other.name} into {self.name}")
        mine = len(self.rows)
        self.rows = self.rows + other.rows
        self.cache.extend(other.cache)
        if self.hidden is not None or other.hidden is not None:  # a side of one-token prompts has none yet
            like = self.hidden if self.hidden is not None else other.hidden
            ours = self.hidden if self.hidden is not None else like.new_zeros(mine, like.shape[1])
            theirs = other.hidden if other.hidden is not None else like.new_zeros(len(other.rows), like.shape[1])
            self.hidden = torch.cat([ours, theirs])
        self.join_own(other)

    def join_own(self, other: BatchedStrategy) -> None:
        self.own = self.own + other.own
        for name in self.row_caches:
            getattr(self, name).extend(getattr(other, name))


class ChainStrategy(BatchedStrategy):
    """A batched draft-and-verify loop over chains: ``propose`` a chain per row (any length,
    none included), the target scores every row's newest token and chain in one forward,
    ``verify_rows`` accepts a prefix per row, and ``accepted`` lets the drafter follow. Each
    row's stats count its chains (``paragen.strategies.counts``). With ``reads_hidden`` the
    verifying forward also returns the hidden states (``hidden``).
    """

    @abstractmethod
    def propose(self, budgets: list[int]) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """(draft [B, k] on the device, each row's chain length (<= k, < its budget), the
        draft's probabilities q [B, k, V] when sampling from a draft model, else None)."""

    def new_row(self, b: int, states: torch.Tensor | None) -> OwnRow:
        return OwnRow(new_counts())

    def accepted(self, accept: list[int], lengths: list[int], before: list[int]) -> None:
        """After verification: row b accepted ``accept[b]`` of its ``lengths[b]`` drafts
        after ``before[b]`` committed tokens (drafters truncate their caches here)."""

    def verify_rows(self, draft: torch.Tensor, lengths: torch.Tensor, logits: torch.Tensor,
                    q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(accept_len [B], next token [B]) on the device: ``verify_chains`` (lossless)."""
        return verify_chains(draft, lengths, logits, self.ctx.sampling, self.generators, q)

    def step_rows(self, budgets: list[int]) -> list[list[int]]:
        ctx, device = self.ctx, self.ctx.target.device
        # 1. propose: a chain per row (possibly empty)
        draft, lengths, q = self.propose(budgets)
        if ctx.trace:
            ctx.trace.lap("draft")
        # 2. verify: one target forward over each row's newest token and its chain
        newest = to_device([[s[-1]] for s in self.seqs], device)
        out = feed_rows(ctx.target, self.cache, torch.cat([newest, draft], 1), hidden=self.reads_hidden)
        logits = out[0] if self.reads_hidden else out
        accept, nxt = self.verify_rows(draft, to_device(lengths, device), logits, q)
        if self.reads_hidden:  # the state at each row's last accepted position predicted its next token
            self.hidden = out[1][torch.arange(len(self.rows), device=device), accept]
            for row in self.rows:
                row.ready = True
        # 3. commit: the step's one device-to-host copy, [accept_len, draft..., next] per row
        host = torch.cat([accept[:, None], draft, nxt[:, None]], 1).tolist()
        if self.reads_hidden:  # row b committed the states of its newest token and accepted drafts
            self.kept_states = (out[1], [list(range(row[0] + 1)) for row in host])
        if ctx.trace:
            ctx.trace.lap("verify")
            self.trace_chains(host, lengths, logits, q)
        committed = [[*row[1 : 1 + row[0]], row[-1]] for row in host]
        self.cache.commit_rows([len(c) for c in committed])
        accepts = [row[0] for row in host]
        self.count(lengths, accepts, lengths)
        self.accepted(accepts, lengths, [len(s) for s in self.seqs])
        for s, c in zip(self.seqs, committed):
            s.extend(c)
        return committed

    def trace_chains(self, host: list[list[int]], lengths: list[int], logits: torch.Tensor,
                     q: torch.Tensor | None) -> None:
        """Record each row's chain (tracing only): the target's probability p of draft token i
        (logits row i) and of its own next token (row accept_len); q when the draft had one."""
        ctx = self.ctx
        p = logits.float().softmax(-1) if ctx.sampling.greedy else warp(logits, ctx.sampling)
        for b, (row, k) in enumerate(zip(host, lengths)):
            a, chain = row[0], row[1 : 1 + k]
            ctx.trace.call(b, Call("chain" if k else "none", self.trace_source, chain, chain_parents(k),
                                   list(range(a)), probs_of(p[b, :k], chain),
                                   probs_of(q[b, :k], chain) if q is not None else None, float(p[b, a, row[-1]])))
