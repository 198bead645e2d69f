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
import tempfile
from pathlib import Path
from typing import Any

from paragen.bench.metrics import Summary

COLUMNS = ("strategy", "exact", "tok/call", "speedup [95% CI]", "tok/s", "agree", "gen_ppl", "ast_ok", "loops",
           "target calls", "draft calls")


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
                     _num(s.gen_ppl), _num(s.ast_ok), _num(s.loops), calls, drafts])
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


def html_report(bench: dict[str, Any], summary: dict[str, Summary]) -> str:
    """A self-contained HTML page: settings, summary table, plots, environment."""
    cfg, env = bench["config"], bench["environment"]
    images = [("Speedup against tokens per call", plot_speedup_vs_calls(summary)),
              ("Quality against speedup", plot_quality_vs_speedup(summary)),
              ("Tokens committed per target call", plot_committed_histograms(summary))]
    figures = "".join(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{png}'>"
                      for title, png in images if png)
    notes = "".join(f"<p class='flag'>{html.escape(n)}</p>" for n in flag_notes(summary))
    settings = _html_table(["setting", "value"], [[k, json.dumps(v)] for k, v in cfg.items()])
    environment = _html_table(["", ""], [[k, json.dumps(v)] for k, v in env.items()])
    title = f"paragen bench: {cfg['task']}, {len(bench['tasks'])} prompts"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
.flag{{color:#b00}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Speedup is ar seconds / strategy seconds over the same prompts (95% bootstrap interval over prompts);
tok/call is new tokens per target forward call; exact is the share of outputs identical to ar;
(peer) rows are transformers <code>generate()</code> on the same weights.</p>
{_html_table(COLUMNS, table_rows(summary))}{notes}
{figures}
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
