"""Throughput against batch size: where does speculation stop paying as the batch grows?

For each batch size, one ``paragen bench`` run (``paragen.bench.run``: warm-up, batches
interleaved with ``ar``, contenders rotated) of ``ar`` and the batched strategies asked for
(default ``speculative`` and ``lookup``; any strategy that decodes a batch) on the same
prompts; tokens per second of each strategy and its ratio to ``ar`` at the same batch size.
The crossover of a strategy is the smallest batch size at which it no longer beats
``ar`` (None: it beats ``ar`` at every size measured). Speculation trades extra target work
per token (k + 1 positions scored for a + 1 kept) for fewer sequential calls; a batch already
fills each call with rows, so past some size the extra work costs more than the calls saved.

Writes OUT/sweep.json (every run's summary and environment) and prints a Markdown table.

Usage (from the repository root; about 3 minutes on 2 quiet cores, well under 8):
    PYTHONPATH=src python scripts/batch_sweep.py --threads 2 --out out/batch-sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from paragen.bench.report import write_atomic
from paragen.bench.run import BenchConfig, run

DEFAULT_STRATEGIES = "ar,speculative,lookup"


def crossover(rows: dict[int, dict[str, float]], name: str) -> int | None:
    """The smallest batch size at which ``name`` is not faster than ``ar`` (None: always faster)."""
    return next((b for b in sorted(rows) if rows[b][name] <= rows[b]["ar"]), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,4,16", help="comma-separated batch sizes (default: 1,4,16)")
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help=f"comma-separated batched strategies, ar first (default: {DEFAULT_STRATEGIES})")
    p.add_argument("--limit", type=int, default=40, help="HumanEval prompts (default: 40)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per prompt at most (default: 128)")
    p.add_argument("--model", default="code-target")
    p.add_argument("--draft", default="code-draft")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    strategies = tuple(dict.fromkeys(["ar", *args.strategies.split(",")]))  # ar first, once
    start = time.perf_counter()
    runs, tok_s = {}, {}
    for b in sizes:
        config = BenchConfig(strategies=strategies, task="humaneval", limit=args.limit, max_new_tokens=args.max_new_tokens,
                             model=args.model, draft=args.draft, device=args.device, threads=args.threads, batch_size=b)
        result = run(config, progress=False, argv=["scripts/batch_sweep.py", *(argv or sys.argv[1:])])
        runs[b] = {"environment": result.environment, "seconds": round(result.seconds, 1),
                   "summary": {n: s.to_dict() for n, s in result.summary.items()}}
        tok_s[b] = {n: s.tok_s for n, s in result.summary.items()}
        exact = {n: s.exact for n, s in result.summary.items()}
        print(f"batch {b}: " + ", ".join(f"{n} {tok_s[b][n]:.0f} tok/s (exact {exact[n]:.2f})" for n in strategies)
              + f"  [{result.seconds:.0f} s]", file=sys.stderr)
    cross = {n: crossover(tok_s, n) for n in strategies if n != "ar"}
    lines = ["| batch | " + " | ".join(f"{n} tok/s" for n in strategies) + " | "
             + " | ".join(f"{n} / ar" for n in strategies if n != "ar") + " |",
             "|---" * (1 + 2 * len(strategies) - 1) + "|"]
    for b in sizes:
        lines.append(f"| {b} | " + " | ".join(f"{tok_s[b][n]:.0f}" for n in strategies) + " | "
                     + " | ".join(f"{tok_s[b][n] / tok_s[b]['ar']:.2f}x" for n in strategies if n != "ar") + " |")
    lines.append("")
    lines += [f"{n} stops beating ar at batch size {c}" if c else f"{n} beats ar at every batch size measured"
              for n, c in cross.items()]
    table = "\n".join(lines) + "\n"
    if 1 in tok_s and 16 in tok_s:
        table += f"ar at batch 16: {tok_s[16]['ar'] / tok_s[1]['ar']:.1f}x its batch-1 tokens/s\n"
    out = Path(args.out)
    write_atomic(out / "sweep.json", json.dumps({"batch_sizes": sizes, "tok_s": tok_s, "crossover": cross,
                                                  "runs": runs, "seconds": round(time.perf_counter() - start, 1)},
                                                 indent=2) + "\n")
    write_atomic(out / "sweep.md", table)
    print(table)
    print(f"wrote {out / 'sweep.json'} and sweep.md in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
