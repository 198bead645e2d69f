"""Measured multi-draft acceptance against the optimum, on the same target and draft distributions.

For each verifier (K-SEQ, recursive rejection with i.i.d. drafts, recursive rejection
without replacement), ``spectr`` decodes HumanEval prompts with ``ceiling=N``: at the first
N steps of every prompt the root position's (p, q, k) is kept, and ``stats.extra["ceiling"]``
sums whether the target's token was drafted, the optimal acceptance for that (p, q, k)
(``paragen.optimum.optimal_acceptance``) and K-SEQ's exact acceptance (i.i.d. drafts).
Each verifier sees its own trajectory, so positions differ between rows; the optimum
column is computed on the positions of the same row.

    .venv/bin/python scripts/spectr_ceiling.py --limit 40 --steps 16 --temperature 0.8 --top-p 0.95
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import paragen
from paragen.tasks import humaneval

VERIFIERS = {
    "kseq (i.i.d.)": dict(verifier="kseq"),
    "rrs (i.i.d.)": dict(verifier="rrs"),
    "rrs (without replacement)": dict(verifier="rrs", replacement=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="code-target")
    ap.add_argument("--draft", default="code-draft")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--steps", type=int, default=16, help="positions measured per prompt (the first N steps)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target, draft = paragen.load(args.model), paragen.load(args.draft)
    rows = []
    for name, options in VERIFIERS.items():
        total = dict(positions=0, accepted=0, optimum=0.0, kseq=0.0)
        for i, task in enumerate(humaneval()[: args.limit]):
            out = paragen.generate(target, task.prompt, "spectr", draft=draft, max_new_tokens=128, k=args.k,
                                   temperature=args.temperature, top_p=args.top_p, seed=i, ceiling=args.steps, **options)
            for key, value in out.stats.extra.get("ceiling", {}).items():
                total[key] += value
        n = total["positions"]
        rows.append({"verifier": name, "positions": n, "measured": total["accepted"] / n,
                     "optimum": total["optimum"] / n, "kseq_exact": total["kseq"] / n if "i.i.d." in name else None})
    print(f"{args.model} + {args.draft}, k = {args.k}, temperature {args.temperature}, top-p {args.top_p}, "
          f"{args.limit} HumanEval prompts x first {args.steps} steps")
    print("| verifier | positions | measured acceptance | optimum (same positions) | K-SEQ exact |\n|---|---|---|---|---|")
    for r in rows:
        kseq = "" if r["kseq_exact"] is None else f"{r['kseq_exact']:.3f}"
        print(f"| {r['verifier']} | {r['positions']} | {r['measured']:.3f} | {r['optimum']:.3f} | {kseq} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
