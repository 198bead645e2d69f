"""The benchmark's human-readable outputs: a Markdown table and an HTML report with plots.

Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas directly (no pyplot,
so no global backend or figure registry is touched) and embedded as base64 PNGs, so the
report is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from paragen.bench.metrics import LOOP_WINDOW, Summary

COLUMNS = ("strategy", "exact", "tok/call", "speedup [95% CI]", "tok/s", "agree", "gen_ppl", "ast_ok", "loops",
           "repeats", "target calls", "draft calls", "drafted/call")

# What each column means (shown under the table in bench.md and report.html).
METRICS = {
    "strategy": "the contender; (peer): transformers generate() on the same weights; (lossy): output may differ "
                "from exact float32 decoding by design (a lossy strategy, or a lossy --dtype for every contender)",
    "exact": "share of prompts whose output is token for token ar's; (!) marks a lossless strategy that differed "
             "under greedy decoding (a bug)",
    "tok/call": "new tokens / target forward calls (the one prompt prefill call excluded): the parallelism",
    "speedup [95% CI]": "ar seconds / this contender's seconds, summed over the same prompts (wall clock, warm-up "
                        "excluded); 95% bootstrap interval over prompts",
    "tok/s": "new tokens / seconds",
    "agree": "share of token positions equal to ar's output (over the longer of the two), mean over prompts",
    "gen_ppl": "perplexity of the output under the target model in float32, pooled over prompts (lower is better; "
               "compare with ar's)",
    "ast_ok": "share of completions that parse as Python when cut at the end of the function",
    "loops": "share of outputs whose last 64 tokens repeat with a period of 8 or less (degenerate repetition); "
             "outputs shorter than 64 tokens are not measured, and - means none was long enough",
    "repeats": "the same with periods up to 32 tokens: whole statements written again and again (includes loops)",
    "target calls": "target forward calls over all prompts (prefill excluded)",
    "draft calls": "draft model forward calls over all prompts (its prefill included)",
    "drafted/call": "drafted tokens verified per target call (tree nodes for a tree; k for a chain): what each call "
                    "costs beyond one token; the report plots tokens per call against it, and the acceptance rate "
                    "per draft position (the bonus token not counted)",
}
SMALL_N = 20  # fewer prompts than this: say that the intervals are wide
WIDE_CI = 0.25  # a speedup interval wider than this share of the speedup: say so


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def table_rows(summary: dict[str, Summary]) -> list[list[str]]:
    """One row of cells per strategy, in the order of ``COLUMNS``."""
    rows = []
    for name, s in summary.items():
        label = name + (" (peer)" if s.peer else "") + ("" if s.lossless else " (lossy)")
        exact = _num(s.exact) + (" (!)" if s.flagged else "")
        speedup = f"{_num(s.speedup)} [{_num(s.speedup_ci95[0])}, {_num(s.speedup_ci95[1])}]"
        calls = "-" if s.target_calls is None else str(s.target_calls)
        drafts = "-" if s.draft_calls is None else str(s.draft_calls)
        rows.append([label, exact, _num(s.tokens_per_call), speedup, _num(s.tok_s, 1), _num(s.agree),
                     _num(s.gen_ppl), _num(s.ast_ok), _num(s.loops), _num(s.repeats), calls, drafts, _num(s.drafted_per_call, 1)])
    return rows


def flag_notes(summary: dict[str, Summary]) -> list[str]:
    """One line per lossless strategy that differed from ``ar`` under greedy decoding."""
    return [f"(!) {name} is lossless but differed from ar on {len(s.non_exact)} of {s.prompts} prompts: "
            f"{', '.join(s.non_exact[:5])}{' ...' if len(s.non_exact) > 5 else ''}"
            for name, s in summary.items() if s.flagged]


def markdown_table(summary: dict[str, Summary]) -> str:
    """The summary as a Markdown table, with a note under it for every flagged strategy."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    notes = flag_notes(summary)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def caveats(bench: dict[str, Any], summary: dict[str, Summary]) -> list[str]:
    """Warnings about how far the numbers can be trusted: few prompts, wide intervals."""
    out = []
    n = len(bench.get("tasks", ()))
    if n < SMALL_N:
        out.append(f"Only {n} prompt{'s' if n != 1 else ''}: intervals are wide and small differences are noise "
                   f"(use {SMALL_N} or more, e.g. a larger --limit).")
    wide = [f"{name} [{_num(s.speedup_ci95[0])}, {_num(s.speedup_ci95[1])}]" for name, s in summary.items()
            if name != "ar" and math.isfinite(s.speedup) and s.speedup > 0
            and (s.speedup_ci95[1] - s.speedup_ci95[0]) / s.speedup > WIDE_CI]
    if wide:
        out.append(f"Wide speedup intervals (more than {WIDE_CI:.0%} of the speedup): {', '.join(wide)}; "
                   "more prompts, or a quieter machine, narrow them.")
    records = bench.get("records", ())
    short = sum(len(r["tokens"]) < LOOP_WINDOW for r in records)
    if short:
        measured = "not measured (-)" if short == len(records) else f"measured over the other {len(records) - short}"
        out.append(f"{short} of {len(records)} outputs are shorter than the {LOOP_WINDOW} tokens loops and repeats look "
                   f"at: {measured}; a larger --max-new-tokens measures them.")
    return out


def auto_line(name: str, segments: dict[str, tuple[int, int]]) -> str:
    """What ``auto`` chose, as shares of its steps and of the tokens they committed."""
    steps, tokens = sum(s for s, _ in segments.values()), sum(t for _, t in segments.values())
    parts = [f"{n} {s / steps:.0%} of steps ({t / tokens:.0%} of tokens)" for n, (s, t) in segments.items()]
    return f"{name} ran: {', '.join(parts)}."


def plain(key: str, value: Any) -> str:
    """A setting as a person writes it: no JSON quotes; options as STRATEGY:KEY=VALUE."""
    if value is None:
        return "-"
    if key == "options" and isinstance(value, list):
        return ", ".join(f"{s}:{k}={v}" for s, k, v in value) or "-"
    if key == "models" and isinstance(value, list):
        return ", ".join(f"{s}={m}" for s, m in value) or "-"
    if key == "command" and isinstance(value, list):
        return shlex.join(value)
    if isinstance(value, list | tuple):
        return ", ".join(plain("", v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={plain(k, v)}" for k, v in value.items()) or "-"
    return str(value)


def run_line(bench: dict[str, Any]) -> str:
    """Prompts, total time and threads of a run, in one sentence."""
    env = bench.get("environment", {})
    seconds = bench.get("seconds")
    took = f"total time {seconds:.0f} s (loading, warm-up, timed runs, scoring)" if seconds else "total time not recorded"
    return (f"{len(bench.get('tasks', ()))} prompts of {bench['config']['task']}, {took}, "
            f"{env.get('torch_threads', '?')} torch thread(s) on {env.get('cpu_count', '?')} CPUs ({env.get('cpu', '?')}).")


def bench_markdown(bench: dict[str, Any], summary: dict[str, Summary]) -> str:
    """``bench.md``: the run in one sentence, the command, the table, caveats and the metric definitions."""
    cfg, env = bench["config"], bench.get("environment", {})
    lines = [f"# paragen bench: {cfg['task']}", "", run_line(bench), ""]
    if env.get("command"):
        lines += [f"Command: `{plain('command', env['command'])}`", ""]
    lines += [markdown_table(summary)]
    lines += [f"> {c}" for c in caveats(bench, summary)] + [""] if caveats(bench, summary) else []
    lines += [auto_line(name, s.auto_segments) + "\n" for name, s in summary.items() if s.auto_segments]
    lines += ["Settings: " + "; ".join(f"{k} {plain(k, v)}" for k, v in cfg.items()), "", "Metrics:", ""]
    lines += [f"- **{name}**: {text}" for name, text in METRICS.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(summary: dict[str, Summary]) -> dict[str, str]:
    """One colour per strategy, the same in every plot (legends rather than labels: lossless
    strategies share a quality value, and their labels would sit on top of each other)."""
    return {name: f"C{i % 10}" for i, name in enumerate(summary)}


def _scatter(ax: Any, points: list[tuple[str, float, float]], colors: dict[str, str], xlabel: str, ylabel: str) -> None:
    for name, x, y in points:
        ax.scatter([x], [y], color=colors[name], label=name, alpha=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot_speedup_vs_calls(summary: dict[str, Summary]) -> str:
    """Speedup (with its 95% interval) against tokens per target call."""
    from matplotlib.figure import Figure

    colors = _colors(summary)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for name, s in summary.items():
        if s.tokens_per_call is None:
            continue
        lo, hi = s.speedup_ci95
        ax.errorbar([s.tokens_per_call], [s.speedup], yerr=[[max(s.speedup - lo, 0)], [max(hi - s.speedup, 0)]],
                    fmt="o", capsize=3, color=colors[name], label=name)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("tokens per target call")
    ax.set_ylabel("speedup over ar (wall clock)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _png(fig)


def plot_quality_vs_speedup(summary: dict[str, Summary]) -> str:
    """Token agreement with ar, and output perplexity, against speedup."""
    from matplotlib.figure import Figure

    colors = _colors(summary)
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    _scatter(left, [(n, s.speedup, s.agree) for n, s in summary.items()], colors,
             "speedup over ar", "token agreement with ar")
    left.set_ylim(0, 1.05)
    _scatter(right, [(n, s.speedup, s.gen_ppl) for n, s in summary.items() if s.gen_ppl is not None], colors,
             "speedup over ar", "gen_ppl under the target (lower is better)")
    right.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _png(fig)


def plot_draft_efficiency(summary: dict[str, Summary]) -> str | None:
    """Draft-and-verify contenders: tokens per call against drafted tokens per call (a chain
    of k, a tree of n nodes: what a bigger tree buys), and the acceptance rate per draft
    position (how far drafts survive)."""
    from matplotlib.figure import Figure

    shown = {n: s for n, s in summary.items() if s.drafted_per_call is not None and s.tokens_per_call is not None}
    if not shown:
        return None
    colors = _colors(summary)
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    _scatter(left, [(n, s.drafted_per_call, s.tokens_per_call) for n, s in shown.items()], colors,
             "drafted tokens verified per target call", "tokens per target call")
    for name, s in shown.items():
        right.plot(range(1, len(s.acceptance or ()) + 1), s.acceptance or (), "o-", color=colors[name], label=name)
    right.set_xlabel("draft position (depth)")
    right.set_ylabel("acceptance rate")
    right.set_ylim(0, 1.05)
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _png(fig)


def plot_committed_histograms(summary: dict[str, Summary]) -> str | None:
    """Share of target calls that committed k tokens, one panel per strategy with a histogram."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    shown = [(n, s.committed_per_call) for n, s in summary.items() if s.committed_per_call]
    if not shown:
        return None
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, hist) in zip(axes, shown):
        total = sum(hist.values())
        ax.bar(list(hist), [v / total for v in hist.values()])
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0.5, max(hist) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
        ax.set_xlabel("tokens committed per call")
        ax.set_ylabel("share of calls")
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- HTML


def _html_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_outputs(bench: dict[str, Any]) -> str:
    """Per-prompt outputs, one collapsed <details> per prompt: the prompt, then each contender's text."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in bench.get("records", ()):
        by_task.setdefault(r["task_id"], []).append(r)
    parts = []
    for t in bench.get("tasks", ()):
        rows = []
        for r in by_task.get(t["id"], ()):
            calls = "-" if r.get("target_calls") is None else r["target_calls"]
            meta = (f"{r['new_tokens']} tokens, {calls} target calls, {r['seconds']:.3f} s, {r['finish_reason']}"
                    + ("" if r.get("exact") is None else f", exact {'yes' if r['exact'] else 'no'}"))
            rows.append(f"<h4>{html.escape(r['strategy'])} <small>({html.escape(meta)})</small></h4>"
                        f"<pre>{html.escape(r['text'])}</pre>")
        summary = f"{t['id']} ({t['prompt_tokens']} prompt tokens{', truncated' if t.get('truncated') else ''})"
        if t.get("trace"):  # bench --trace STRATEGY: the prompt's trace page
            summary += f" - trace: {t['trace']}"
            rows.insert(0, f"<p><a href='{html.escape(t['trace'])}'>trace page</a></p>")
        parts.append(f"<details><summary>{html.escape(summary)}</summary><h4>prompt</h4>"
                     f"<pre class='prompt'>{html.escape(t['prompt'])}</pre>{''.join(rows)}</details>")
    return "".join(parts)


def html_report(bench: dict[str, Any], summary: dict[str, Summary], outputs: bool = True) -> str:
    """A self-contained HTML page: the run, summary table, caveats, metric definitions,
    plots, per-prompt outputs (collapsed; ``outputs=False`` leaves them out), settings,
    environment."""
    cfg, env = bench["config"], bench["environment"]
    images = [("Speedup against tokens per call", plot_speedup_vs_calls(summary)),
              ("Quality against speedup", plot_quality_vs_speedup(summary)),
              ("Tokens committed per target call", plot_committed_histograms(summary)),
              ("Drafts: tokens per call against drafted tokens per call; acceptance per position",
               plot_draft_efficiency(summary))]
    figures = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
                      for title, png in images if png)
    notes = "".join(f"<p class='flag'>{html.escape(n)}</p>" for n in flag_notes(summary))
    warnings = "".join(f"<p class='warn'>{html.escape(c)}</p>" for c in caveats(bench, summary))
    metrics = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in METRICS.items())
    per_prompt = html_outputs(bench) if outputs else ""
    if per_prompt:
        per_prompt = f"<h2>Outputs per prompt</h2>{per_prompt}"
    settings = _html_table(["setting", "value"], [[k, plain(k, v)] for k, v in cfg.items()])
    environment = _html_table(["", ""], [[k, plain(k, v)] for k, v in env.items()])
    title = f"paragen bench: {cfg['task']}, {len(bench['tasks'])} prompts"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
.flag{{color:#b00}}.warn{{color:#a60;font-weight:bold}}img{{max-width:100%}}dt{{font-weight:bold}}
pre{{background:#f6f6f6;padding:4px;white-space:pre-wrap}}pre.prompt{{background:#eef}}summary{{cursor:pointer}}
h4{{margin:0.6em 0 0.2em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(run_line(bench))}</p>
{_html_table(COLUMNS, table_rows(summary))}{notes}{warnings}
<h2>Metrics</h2><dl>{metrics}</dl>
{figures}
{per_prompt}
<h2>Settings</h2>{settings}
<h2>Environment</h2>{environment}
</body></html>
"""


def bench_json(bench: dict[str, Any]) -> str:
    """``bench`` as JSON text: indented, but one line per task and per record (token
    lists would otherwise take one line per token)."""
    parts = []
    for key, value in bench.items():
        if isinstance(value, list):
            items = ",\n  ".join(json.dumps(v) for v in value)
            parts.append(f"{json.dumps(key)}: [\n  {items}\n ]" if value else f"{json.dumps(key)}: []")
        else:
            parts.append(f"{json.dumps(key)}: " + json.dumps(value, indent=1).replace("\n", "\n "))
    return "{\n " + ",\n ".join(parts) + "\n}\n"


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and
    ``os.replace``, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
