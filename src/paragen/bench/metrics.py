"""Benchmark metrics: pure functions over per-prompt records (no model, no clock).

A ``Record`` is one strategy on one prompt. ``score_against_reference`` fills in how each
record compares with ``ar`` on the same prompt; ``summarize`` reduces the records of each
strategy to one ``Summary`` (the row of the table and of ``bench.json``).
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from paragen import labels

REFERENCE = "ar"

# A function header line: optional indentation, optional ``async``, ``def name(``.
_DEF = re.compile(r"^([ \t]*)(async[ \t]+)?def[ \t]+\w+[ \t]*\(")


@dataclass(frozen=True)
class Record:
    """One strategy on one prompt. Calls are None where they could not be counted.

    ``target_calls``: target forward calls that produced tokens (the prompt-only prefill
    call of paragen strategies is left out, see ``paragen.driver.Stats``).
    ``exact`` / ``agree``: against ``ar`` on the same prompt; ``gen_ppl``: perplexity of
    the output under the target model (None for an empty output); ``ast_ok``: the
    completion parses (see ``completion_parses``).
    """

    task_id: str
    strategy: str
    prompt_tokens: int
    new_tokens: int
    target_calls: int | None
    draft_calls: int | None
    seconds: float
    tokens: tuple[int, ...]
    text: str
    finish_reason: str
    committed_per_call: dict[int, int] | None = None
    extra: dict[str, Any] | None = None  # the strategy's own statistics (``Stats.extra``)
    exact: bool | None = None
    agree: float | None = None
    gen_ppl: float | None = None
    ast_ok: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens"] = list(self.tokens)
        if self.committed_per_call is not None:  # JSON object keys are strings
            d["committed_per_call"] = {str(k): v for k, v in sorted(self.committed_per_call.items())}
        return d


@dataclass(frozen=True)
class Summary:
    """One strategy over all prompts; see ``summarize`` for each definition."""

    strategy: str
    lossless: bool
    peer: bool
    prompts: int
    new_tokens: int
    target_calls: int | None
    draft_calls: int | None
    seconds: float
    tokens_per_call: float | None
    tok_s: float
    speedup: float
    speedup_ci95: tuple[float, float]
    exact: float
    non_exact: tuple[str, ...]
    agree: float
    gen_ppl: float | None
    ast_ok: float
    loops: float | None  # None: no output was long enough to measure (``LOOP_WINDOW``)
    committed_per_call: dict[int, int] | None
    flagged: bool
    drafted_per_call: float | None = None
    acceptance: tuple[float, ...] | None = None
    auto_segments: dict[str, tuple[int, int]] | None = None  # ``auto``: strategy -> (steps, tokens) it ran
    repeats: float | None = None  # None in bench.json files written before it was measured

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["speedup_ci95"] = list(self.speedup_ci95)
        d["non_exact"] = list(self.non_exact)
        d["acceptance"] = None if self.acceptance is None else list(self.acceptance)
        if self.committed_per_call is not None:
            d["committed_per_call"] = {str(k): v for k, v in sorted(self.committed_per_call.items())}
        return d


def token_agreement(tokens: tuple[int, ...] | list[int], reference: tuple[int, ...] | list[int]) -> float:
    """Share of positions where two outputs hold the same token.

    Positions run over the longer output, so a missing token counts as a disagreement;
    two empty outputs agree fully (1.0).
    """
    n = max(len(tokens), len(reference))
    if n == 0:
        return 1.0
    return sum(a == b for a, b in zip(tokens, reference)) / n


STATEMENT_PERIOD = 32  # ``repeats``: a whole line or statement, such as "x = f(x)\n" written again and again
PHRASE_PERIOD = 8  # ``loops``: a word or phrase stuck on repeat
LOOP_WINDOW = 64  # ``loops`` and ``repeats`` look at an output's last 64 tokens: shorter outputs are not measured


def loops(tokens: tuple[int, ...] | list[int], window: int = LOOP_WINDOW, max_period: int = PHRASE_PERIOD) -> bool:
    """Whether the last ``window`` tokens repeat with a period of ``max_period`` or less.

    Such degenerate loops are easy to predict, so they inflate the tokens per call of
    lookup-style strategies; the share of looping outputs says how much. With the default
    period (8) this catches a word or phrase stuck on repeat; a model that repeats whole
    statements loops with longer periods, which ``max_period=STATEMENT_PERIOD`` (the
    summary's ``repeats``) catches as well.
    """
    tail = list(tokens[-window:])
    if len(tail) < window:
        return False
    return any(all(tail[i] == tail[i + p] for i in range(window - p)) for p in range(1, max_period + 1))


def function_completion(prompt: str, output: str) -> str:
    """The function the prompt opens, completed by ``output`` and cut at its end.

    Rule: the function is the one whose ``def`` line comes last in the prompt; the text
    runs from that line (decorators dropped) through ``prompt + output`` and is cut before
    the first line of the output that is non-blank and indented no deeper than the
    ``def`` line (a line at the header's level or shallower cannot be in its body). The
    output's first line is never a cut point when it continues the prompt's last line.
    The result is dedented to the ``def`` line. With no ``def`` in the prompt nothing is cut.
    """
    prompt_lines = prompt.splitlines(keepends=True)
    lines = (prompt + output).splitlines(keepends=True)
    defs = [(i, m) for i, line in enumerate(prompt_lines) if (m := _DEF.match(line))]
    if not defs:
        return prompt + output
    start, match = defs[-1]
    indent = len(match.group(1).expandtabs())
    # Either way, the first line that is output only is line len(prompt_lines): when the
    # prompt ends without a newline, its last line is shared with the output.
    end = len(lines)
    for i in range(len(prompt_lines), len(lines)):
        line = lines[i].expandtabs()
        if line.strip() and len(line) - len(line.lstrip(" ")) <= indent:
            end = i
            break
    return "".join(_dedent(line.expandtabs(), indent) for line in lines[start:end])


def _dedent(line: str, indent: int) -> str:
    """Drop up to ``indent`` leading spaces (fewer on a less indented string-literal line)."""
    return line[min(indent, len(line) - len(line.lstrip(" "))) :]


def completion_parses(prompt: str, output: str) -> bool:
    """Whether ``function_completion(prompt, output)`` is valid Python (``ast.parse``) and the
    output wrote some of the body: a prompt's header and docstring parse on their own, so an
    output that leaves the function at once (say, by starting a new ``def``) does not count."""
    completion = function_completion(prompt, output)
    if completion.strip() == function_completion(prompt, "").strip():
        return False
    try:
        ast.parse(completion)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def score_against_reference(records: list[Record]) -> list[Record]:
    """Fill ``exact`` and ``agree`` of every record from the ``ar`` record of its prompt.

    ``exact`` is token-for-token identity with ``ar`` (what a lossless greedy strategy
    must give). A prompt with no ``ar`` record is an error: the reference is always run.
    """
    reference = {r.task_id: r.tokens for r in records if r.strategy == REFERENCE}
    missing = sorted({r.task_id for r in records} - set(reference))
    if missing:
        raise ValueError(f"no '{REFERENCE}' record for prompts {missing[:3]}: the reference must run on every prompt")
    return [replace(r, exact=r.tokens == reference[r.task_id], agree=token_agreement(r.tokens, reference[r.task_id]))
            for r in records]


def bootstrap_ratio_ci(
    numerator: list[float], denominator: list[float], seed: int, resamples: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerator) / sum(denominator), resampling pairs.

    Prompts are the unit resampled (with replacement), so the interval reflects how much
    the speedup depends on which prompts were drawn. Seeded: the same inputs give the same
    interval.
    """
    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if len(num) != len(den) or len(num) == 0:
        raise ValueError("bootstrap needs two equally long, non-empty lists")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(resamples, len(num)))  # [resamples, prompts]
    ratios = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(lo), float(hi)


def pooled_perplexity(records: list[Record]) -> float | None:
    """exp of the mean per-token NLL over all outputs: per-record perplexities weighted by
    their token counts (the corpus-level perplexity of every output together)."""
    scored = [(r.new_tokens, r.gen_ppl) for r in records if r.gen_ppl is not None and r.new_tokens > 0]
    total = sum(n for n, _ in scored)
    if total == 0:
        return None
    return math.exp(sum(n * math.log(p) for n, p in scored) / total)


def loop_share(records: list[Record], max_period: int) -> float | None:
    """Share of the outputs of at least ``LOOP_WINDOW`` tokens that ``loops`` with periods up to
    ``max_period``; None when every output is shorter (the metric cannot be computed, which is
    not the same as no loops: the report says so)."""
    measured = [loops(r.tokens, max_period=max_period) for r in records if len(r.tokens) >= LOOP_WINDOW]
    return sum(measured) / len(measured) if measured else None


def _sum_or_none(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(values)  # type: ignore[arg-type]


def _merge_histograms(records: list[Record]) -> dict[int, int] | None:
    if any(r.committed_per_call is None for r in records):
        return None
    total: Counter[int] = Counter()
    for r in records:
        total.update(r.committed_per_call or {})
    return dict(sorted(total.items()))


def draft_statistics(records: list[Record]) -> tuple[float | None, tuple[float, ...] | None]:
    """(drafted tokens verified per target call, acceptance rate per draft position) of the
    draft-and-verify strategies, whose ``extra`` holds ``nodes`` (tokens drafted and
    verified in all; tree nodes for a tree) and per-position ``proposed`` / ``accepted``
    counts (position d: steps that drafted that far, and steps that accepted that far;
    the bonus token is not counted). (None, None) for the other strategies."""
    if not records or any(r.extra is None or "nodes" not in r.extra for r in records):
        return None, None
    calls = sum(r.target_calls or 0 for r in records)
    proposed: Counter[int] = Counter()
    accepted: Counter[int] = Counter()
    for r in records:
        proposed.update(dict(enumerate(r.extra["proposed"])))
        accepted.update(dict(enumerate(r.extra["accepted"])))
    rates = tuple(accepted[d] / proposed[d] for d in sorted(proposed) if proposed[d])
    return (sum(r.extra["nodes"] for r in records) / calls if calls else None), rates


def summarize_strategy(
    records: list[Record], reference: dict[str, Record], lossless: bool, peer: bool, greedy: bool, seed: int,
    resamples: int = 1000,
) -> Summary:
    """One strategy's summary; ``records`` are scored (``score_against_reference``) and
    ``reference`` maps each prompt to its ``ar`` record.

    tokens_per_call = sum new tokens / sum target calls (None if calls are unknown);
    speedup = sum ar seconds / sum strategy seconds over the same prompts, with a
    bootstrap 95% interval; tok_s = sum new tokens / sum seconds; exact, agree, ast_ok =
    means over prompts; gen_ppl = pooled perplexity; loops = share of outputs whose last
    64 tokens repeat with a period of 8 or less (``loops``); repeats = the same with periods up to
    ``STATEMENT_PERIOD`` (whole statements repeated); both over the outputs of at least 64
    tokens (``loop_share``). ``lossless``: the strategy's guarantee, and no record says its
    output is lossy (a lossy weight format or dtype: ``paragen.labels``). ``flagged``: a lossless
    strategy that did not reproduce ``ar`` on every prompt under greedy decoding (a bug to look at).
    """
    lossless = lossless and not any(labels.lossy(r.extra) for r in records)
    ids = [r.task_id for r in records]
    ar_seconds = [reference[i].seconds for i in ids]
    seconds = [r.seconds for r in records]
    new_tokens = sum(r.new_tokens for r in records)
    target_calls = _sum_or_none([r.target_calls for r in records])
    non_exact = tuple(r.task_id for r in records if not r.exact)
    total_seconds = sum(seconds)
    drafted_per_call, acceptance = draft_statistics(records)
    return Summary(
        strategy=records[0].strategy,
        lossless=lossless,
        peer=peer,
        prompts=len(records),
        new_tokens=new_tokens,
        target_calls=target_calls,
        draft_calls=_sum_or_none([r.draft_calls for r in records]),
        seconds=total_seconds,
        tokens_per_call=new_tokens / target_calls if target_calls else None,
        tok_s=new_tokens / total_seconds if total_seconds > 0 else 0.0,
        speedup=sum(ar_seconds) / total_seconds if total_seconds > 0 else math.inf,
        speedup_ci95=bootstrap_ratio_ci(ar_seconds, seconds, seed, resamples),
        exact=sum(bool(r.exact) for r in records) / len(records),
        non_exact=non_exact,
        agree=sum(r.agree or 0.0 for r in records) / len(records),
        gen_ppl=pooled_perplexity(records),
        ast_ok=sum(bool(r.ast_ok) for r in records) / len(records),
        loops=loop_share(records, max_period=PHRASE_PERIOD),
        repeats=loop_share(records, max_period=STATEMENT_PERIOD),
        committed_per_call=_merge_histograms(records),
        flagged=lossless and greedy and bool(non_exact),
        drafted_per_call=drafted_per_call,
        acceptance=acceptance,
        auto_segments=auto_segments(records),
    )


def auto_segments(records: list[Record]) -> dict[str, tuple[int, int]] | None:
    """What ``auto`` ran over all prompts: each chosen strategy's steps and committed tokens
    (None for the other strategies)."""
    segments = [s for r in records if r.extra and "auto" in r.extra for s in r.extra["auto"]["segments"]]
    if not segments:
        return None
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in segments:
        total[s["strategy"]][0] += s["steps"]
        total[s["strategy"]][1] += s["tokens"]
    return {name: (steps, tokens) for name, (steps, tokens) in sorted(total.items(), key=lambda kv: -kv[1][0])}


def summarize(
    records: list[Record], lossless: dict[str, bool], peers: set[str], greedy: bool, seed: int, resamples: int = 1000
) -> dict[str, Summary]:
    """Summaries of every strategy in ``records`` (in first-seen order), scored against ``ar``.

    ``lossless``: each strategy's guarantee (its class attribute); ``peers``: names of
    the transformers peers; ``greedy``: whether the run was greedy (only then must a
    lossless strategy match ``ar`` exactly).
    """
    scored = score_against_reference(records)
    reference = {r.task_id: r for r in scored if r.strategy == REFERENCE}
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in scored:
        groups[r.strategy].append(r)
    return {name: summarize_strategy(rs, reference, lossless[name], name in peers, greedy, seed, resamples)
            for name, rs in groups.items()}
