"""A decoding trace: what each model call proposed, what the verifier decided, what was committed.

Off by default: ``generate(..., trace=True)`` puts a ``Recorder`` in ``DecodeContext.trace``
and every strategy, at its propose / verify / commit points, does ``if ctx.trace:
ctx.trace.call(row, Call(...))``. With tracing off that is one attribute test per step, so
an untraced decode does no extra work (``scripts/trace_overhead.py`` measures both).

The schema (``SCHEMA``, documented in docs/trace.md) is plain JSON: a ``Trace`` per row,
holding one ``Call`` per decoding step (one target call, or one decoder call for speech).
Every proposal is stored as a token tree rooted at the newest committed token: a chain is a
tree whose node i has parent i - 1, lookahead's n-gram candidates merge into one tree where
their prefixes coincide, so one rule colours every draft-and-verify strategy's decisions. Diffusion-style calls
(masked positions filled by confidence) carry ``positions`` and ``scores`` instead of parents.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from paragen.errors import InvalidInputError

SCHEMA = "paragen.trace/1"  # bump the number on any change a reader must know about

# Proposal kinds: what shape ``tokens`` has. "none": the target alone (``ar``); "chain",
# "tree", "ngram" (pool n-grams merged where their prefixes coincide), "jacobi" (a window of guesses as a
# chain): trees by ``parents``; "diffusion": masked ``positions`` with ``scores``; "nar": one
# non-autoregressive call filling every position (CASS-NAT), "rescore": a call that scores
# finished candidates, "beam": one beam-search step.
KINDS = ("none", "chain", "tree", "ngram", "jacobi", "diffusion", "nar", "rescore", "beam")
TREE_KINDS = KINDS[:5]  # proposals stored as trees (``parents``), decided by a walk from the root


class TraceError(InvalidInputError):
    """A trace file that is not a paragen trace (or of a schema this version cannot read)."""


@dataclass
class Call:
    """One decoding step (one target or decoder call; ``target_calls`` says if a step made more).

    Trees: ``tokens[i]`` is proposed node i (the root, the newest committed token, excluded),
    ``parents[i]`` its parent node (-1: the root), ``accepted`` the accepted path's nodes from
    the root down; ``p[i]`` / ``q[i]`` the target's / drafter's probability of ``tokens[i]``
    given its parent (what the acceptance rule compares; warped when sampling), ``next_p``
    the target's probability of its own token that ends the step.
    Diffusion: ``positions[i]`` (counted from the first new token; the prompt's tail is
    negative) holds candidate ``tokens[i]`` with score ``scores[i]``; ``accepted``: the
    indices unmasked by this call, best first; ``block``: the denoised [start, end).
    ``committed``: what the step handed the driver, in order; ``kept``: how many of those the
    row kept (EOS, a stop string or the budget drop the rest).
    """

    kind: str
    source: str  # what proposed: target, draft, context, heads, eagle, window, pool, model, ctc
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    p: list[float] | None = None
    q: list[float] | None = None
    next_p: float | None = None
    positions: list[int] | None = None
    scores: list[float] | None = None
    block: list[int] | None = None
    committed: list[int] = field(default_factory=list)
    kept: int = 0
    target_calls: int = 1
    draft_calls: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    other_s: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)  # kind-specific extras (window rows, candidates, ...)

    def decisions(self) -> list[str]:
        """Per proposed token: "accepted"; "rejected" (the verifier looked at it: its parent was
        accepted, it was not); "unreached" (an ancestor was rejected). Diffusion: accepted or
        "remasked" (left masked for a later call)."""
        ok = set(self.accepted)
        if self.kind not in TREE_KINDS:
            return ["accepted" if i in ok else "remasked" for i in range(len(self.tokens))]
        return ["accepted" if i in ok else "rejected" if par == -1 or par in ok else "unreached"
                for i, par in enumerate(self.parents)]

    @property
    def own(self) -> str:
        """What the target's own final token was: "corrected" (it replaced a rejected proposal),
        "bonus" (every proposal it could follow was accepted), or "own" (nothing was proposed)."""
        if not self.tokens or self.kind not in TREE_KINDS:
            return "own"
        last = self.accepted[-1] if self.accepted else -1
        return "corrected" if any(par == last for par in self.parents) else "bonus"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("p", "q", "scores"):
            if d[key] is not None:
                d[key] = [round(x, 4) for x in d[key]]
        for key in ("draft_s", "verify_s", "other_s"):
            d[key] = round(d[key], 7)
        if d["next_p"] is not None:
            d["next_p"] = round(d["next_p"], 4)
        d["decisions"], d["own"] = self.decisions(), self.own
        return d


@dataclass
class Trace:
    """One row's trace: its prompt, its calls, and what they produced."""

    strategy: str
    prompt: list[int]
    calls: list[Call] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # the Generation's tokens: concatenated kept commits
    text: str = ""
    prompt_text: str = ""
    pieces: dict[int, str] = field(default_factory=dict)  # token id -> its text, for every id in the trace
    stats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # model name, options; speech: CTC frames
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "strategy": self.strategy, "meta": self.meta, "stats": self.stats,
                "prompt": self.prompt, "prompt_text": self.prompt_text, "tokens": self.tokens, "text": self.text,
                "pieces": {str(k): v for k, v in sorted(self.pieces.items())},
                "calls": [c.to_dict() for c in self.calls]}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def describe(self, tokenizer_decode) -> None:
        """Fill ``pieces`` with the text of every token id the trace mentions."""
        ids = {*self.prompt, *self.tokens}
        for c in self.calls:
            ids.update(c.tokens)
            ids.update(c.committed)
        self.pieces = {i: tokenizer_decode([i]) for i in sorted(ids)} if tokenizer_decode else {}
        self.prompt_text = tokenizer_decode(self.prompt) if tokenizer_decode else ""

    @classmethod
    def from_dict(cls, d: Any, source: str = "trace") -> Trace:
        """A Trace from ``to_dict``'s output; a TraceError naming what is wrong otherwise."""
        if not isinstance(d, dict) or "schema" not in d:
            raise TraceError(f"{source} is not a paragen trace (no 'schema' field): write one with "
                             "`paragen generate --trace-json FILE` or generate(..., trace=True)")
        if d["schema"] != SCHEMA:
            raise TraceError(f"{source} has schema {d['schema']!r}; this paragen reads {SCHEMA!r}")
        names = {f.name for f in fields(Call)}
        try:
            calls = [Call(**{k: v for k, v in c.items() if k in names}) for c in d["calls"]]
            for i, c in enumerate(calls):
                if c.kind not in KINDS:
                    raise TraceError(f"{source}: call {i} has unknown kind {c.kind!r}")
                if c.kind in TREE_KINDS and len(c.parents) != len(c.tokens):
                    raise TraceError(f"{source}: call {i} has {len(c.tokens)} tokens but {len(c.parents)} parents")
            return cls(strategy=str(d["strategy"]), prompt=list(d["prompt"]), calls=calls, tokens=list(d["tokens"]),
                       text=str(d.get("text", "")), prompt_text=str(d.get("prompt_text", "")),
                       pieces={int(k): v for k, v in d.get("pieces", {}).items()}, stats=dict(d.get("stats", {})),
                       meta=dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TraceError(f"{source} is not a valid paragen trace ({type(e).__name__}: {e})") from None

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TraceError(f"cannot read trace file {path}: {e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"{path} is not JSON ({e}): a trace file is what --trace-json writes") from None
        return cls.from_dict(d, str(path))


class Recorder:
    """The recorder a traced decode carries in ``DecodeContext.trace``: one ``Trace`` per row.

    Strategies address rows by their index in the current batch (``call(row, ...)``); the
    driver tells the recorder which original rows those are (``begin``), and closes each
    step (``end``) with the tokens the row kept and the step's calls. Timings: ``lap(phase)``
    charges the time since the previous lap (or the step's start) to "draft" or "verify";
    the rest of the step is "other". In a batch every row of a step gets the step's times.
    On a GPU a lap waits for the device, so the split is real (tracing on only).
    """

    def __init__(self, strategy: str, prompts: list[list[int]], device: torch.device | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        self.traces = [Trace(strategy, list(p), meta=dict(meta or {})) for p in prompts]
        self.sync = device is not None and device.type == "cuda"
        self.active: list[int] = list(range(len(prompts)))
        self.pending: dict[int, Call] = {}
        self.t0 = self.mark = 0.0
        self.laps = {"draft": 0.0, "verify": 0.0}

    def begin(self, active: list[int]) -> None:
        """A step starts for these original rows (in batch order)."""
        self.active, self.pending = active, {}
        self.laps = {"draft": 0.0, "verify": 0.0}
        self.t0 = self.mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[phase] += now - self.mark
        self.mark = now

    def call(self, row: int, call: Call) -> None:
        """Row ``row`` (of the current batch) made this call in the current step."""
        self.pending[row] = call

    def end(self, row: int, committed: list[int], kept: int, target_calls: int, draft_calls: int) -> None:
        """Close row ``row``'s step: it committed ``committed`` and kept the first ``kept``. A
        strategy that recorded nothing gets a plain call (the target's own tokens)."""
        call = self.pending.pop(row, None) or Call("none", "target")
        total = time.perf_counter() - self.t0
        call.committed, call.kept = list(committed), kept
        call.target_calls, call.draft_calls = target_calls, draft_calls
        call.draft_s, call.verify_s = self.laps["draft"], self.laps["verify"]
        call.other_s = max(0.0, total - call.draft_s - call.verify_s)
        self.traces[self.active[row]].calls.append(call)


def plain(d: dict[str, Any]) -> dict[str, Any]:
    """A dict as JSON gives it back (integer keys become strings), so a trace equals its round trip."""
    return json.loads(json.dumps(d, default=str))


def probs_of(probs: torch.Tensor, tokens: list[int]) -> list[float]:
    """probs [N, V] (one row per token) -> each token's probability, on the host."""
    if not tokens:
        return []
    idx = torch.tensor(tokens, device=probs.device)
    return probs[torch.arange(len(tokens), device=probs.device), idx].float().tolist()


def chain_parents(n: int) -> list[int]:
    """A chain of n proposed tokens as a tree: node i's parent is i - 1 (the root for i = 0)."""
    return list(range(-1, n - 1))
