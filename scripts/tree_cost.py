"""Cost of one target call against the number of tokens it verifies, on this machine.

A draft-and-verify step pays one target call over (1 + drafted nodes) tokens; whether a
bigger tree pays depends on how that cost grows (Sequoia: the best budget is where the
extra accepted tokens stop covering it). For each size N, a chain tree of N nodes (the
mask and positions of a real tree; the shape does not change the cost) is fed after a
cached prompt, timed as the median of repeats, and reported against N = 1.

    .venv/bin/python scripts/tree_cost.py --model code-target --threads 2 --out out/tree-cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import paragen
from paragen.tree import TokenTree


def time_call(model, prefix: int, nodes: int, repeats: int) -> float:
    """Median seconds of one forward of ``nodes`` tree tokens after ``prefix`` cached tokens."""
    cache = model.new_cache(max_length=prefix + nodes + 1)
    with torch.inference_mode():
        model(torch.arange(prefix)[None] % 97 + 10, torch.arange(prefix)[None], cache=cache)
        cache.commit(prefix)
        tree = TokenTree(5)
        parent = 0
        for i in range(nodes - 1):
            parent = tree.add(parent if i % 3 else 0, 11 + i)  # some branching, some depth
        x, pos, mask = torch.tensor([tree.tokens]), torch.tensor([tree.positions(prefix)]), tree.mask()[None]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, pos, cache=cache, mask=mask)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="code-target")
    ap.add_argument("--sizes", default="1,2,4,8,16,24,32,48,64,96,128")
    ap.add_argument("--prefix", type=int, default=256, help="cached tokens before the tree")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = paragen.load(args.model)
    sizes = [int(s) for s in args.sizes.split(",")]
    time_call(model, args.prefix, 8, 5)  # warm-up
    rows = [{"tokens": n, "ms": 1e3 * time_call(model, args.prefix, n, args.repeats)} for n in sizes]
    base = rows[0]["ms"]
    print(f"{args.model}, {args.threads} threads, {args.prefix} cached tokens")
    print("| tokens per call | ms per call | vs 1 token |\n|---|---|---|")
    for r in rows:
        r["ratio"] = r["ms"] / base
        print(f"| {r['tokens']} | {r['ms']:.2f} | {r['ratio']:.2f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": args.model, "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
