"""Benchmark of ``paragen batch``: in this process, on 1 Ray actor, on 2 Ray actors.

Writes a prompts file (HumanEval's 164 prompts, then the stdlib prompts, about 300 in all,
repeated to ``--rows``, each ``--max-tokens`` greedy), then runs ``paragen batch`` as a subprocess once per setting
into a fresh output, each on ``--threads`` torch threads per decoder (the in-process run has
one decoder, each actor is one). Per setting: the command's wall time (model loads and, on
Ray, starting the local instance included) and the job's own rows/s and tokens/s from its
summary, checked to give the same texts as the in-process run. "first rows s" is the time
from the start of decoding to the first rows back (on Ray: starting the instance, the
actors, and their model loads), part of "job s".

    .venv/bin/python scripts/batch_bench.py --out out/batch-bench.json
    .venv/bin/python scripts/batch_bench.py --rows 24 --max-tokens 8 --settings here,1   # a quick check

Never run it beside training, tests or another benchmark: two cores stall badly when shared.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_prompts(path: Path, rows: int, max_chars: int) -> None:
    from paragen.tasks import humaneval, stdlib

    tasks = [t for t in humaneval() + stdlib() if len(t.prompt) <= max_chars]
    # about 300 prompts in all: the list repeats (ids made unique) to make up --rows
    rows_out = [{"id": f"{tasks[i % len(tasks)].id}#{i // len(tasks)}", "prompt": tasks[i % len(tasks)].prompt}
                for i in range(rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows_out))


def run(setting: str, prompts: Path, out: Path, args) -> dict:
    """One ``paragen batch`` run: ``here`` in the process, else that many actors on a local Ray instance."""
    cmd = [sys.executable, "-m", "paragen", "batch", "--input", str(prompts), "--output", str(out), "--model", args.model,
           "--max-tokens", str(args.max_tokens), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--no-progress"]
    if setting != "here":
        cmd += ["--ray", "local", "--workers", setting]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    found = re.search(r"tokens: (\d+) in ([\d.]+) s.*first rows ([\d.]+) s", done.stderr)
    tokens, seconds, first = int(found.group(1)), float(found.group(2)), float(found.group(3))
    rows = sum(1 for _ in out.open())
    return {"setting": "in-process" if setting == "here" else f"{setting} actor(s)", "rows": rows, "tokens": tokens,
            "job_seconds": seconds, "first_rows_seconds": first,
            "wall_seconds": round(wall, 2), "rows_per_s": round(rows / seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="code-target")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="rows per generate call (default: 16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per decoder (default: 1)")
    p.add_argument("--settings", default="here,1,2", help="here (in-process) and/or actor counts (default: here,1,2)")
    p.add_argument("--max-prompt-chars", type=int, default=1200)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_prompts(prompts, args.rows, args.max_prompt_chars)
        results, texts = [], {}
        for setting in args.settings.split(","):
            out = Path(tmp) / f"out-{setting}.jsonl"
            results.append(run(setting, prompts, out, args))
            texts[setting] = [json.loads(line)["text"] for line in out.open()]
            print(json.dumps(results[-1]), flush=True)
        first = next(iter(texts.values()))
        same = {s: t == first for s, t in texts.items()}
    base = results[0]["rows_per_s"]
    print(f"\n| setting | rows | tokens | job s | first rows s | wall s | rows/s | tokens/s | vs {results[0]['setting']} "
          "| same text |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r, s in zip(results, same):
        print(f"| {r['setting']} | {r['rows']} | {r['tokens']} | {r['job_seconds']:.1f} | {r['first_rows_seconds']:.1f} | "
              f"{r['wall_seconds']:.1f} | "
              f"{r['rows_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['rows_per_s'] / base:.2f}x | {same[s]} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results, "same_text": same}, indent=1))


if __name__ == "__main__":
    main()
