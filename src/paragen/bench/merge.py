"""Merge several ``paragen bench`` runs into one table and report: a sweep over a strategy's
settings, one run per setting (each with its own ``ar`` baseline, measured in that run).

    python -m paragen.bench.merge out/diffusion-a out/diffusion-b ... --out out/diffusion-sweep

Each run's non-``ar`` rows are labelled ``strategy[run directory name]``; the ``ar`` row of
the first run is kept as the reference row. Speedups stay as measured in their own run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from paragen.bench.metrics import REFERENCE, Summary
from paragen.bench.report import html_report, markdown_table, write_atomic


def load_summary(run: Path) -> tuple[dict[str, Any], dict[str, Summary]]:
    bench = json.loads((run / "bench.json").read_text())
    summary = {}
    for name, s in bench["summary"].items():
        hist = s["committed_per_call"]
        summary[name] = Summary(**{
            **s,
            "speedup_ci95": tuple(s["speedup_ci95"]),
            "non_exact": tuple(s["non_exact"]),
            "committed_per_call": {int(k): v for k, v in hist.items()} if hist is not None else None,
        })
    return bench, summary


def merge(runs: list[Path]) -> tuple[dict[str, Any], dict[str, Summary]]:
    """The first run's bench record (for settings) and the merged, labelled summaries."""
    first, merged = None, {}
    for run in runs:
        bench, summary = load_summary(run)
        first = first or bench
        for name, s in summary.items():
            if name == REFERENCE:
                merged.setdefault(REFERENCE, s)
            else:
                merged[f"{name}[{run.name}]"] = s
    return first, merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paragen.bench.merge", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench output directories (each with bench.json)")
    parser.add_argument("--out", type=Path, required=True, help="directory for summary.md and report.html")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "bench.json").exists()]
    if missing:
        parser.error(f"no bench.json in {', '.join(missing)}")
    bench, summary = merge(args.runs)
    table = markdown_table(summary)
    write_atomic(args.out / "summary.md", table + "\n")
    write_atomic(args.out / "report.html", html_report(bench, summary, outputs=False))  # outputs: see each run
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
