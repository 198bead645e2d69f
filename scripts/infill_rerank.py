"""Could a full-attention diffusion model's infills be rescued by choosing among several?

For each single-line hole of the infilling bench (``paragen bench --task infill``), the
diffusion model fills the hole once per number of masks in ``--lengths`` (the ``prefix``
rule at 0.9, dual cache; the first line kept, as ``lines=oracle`` does), and ``code-target``
ranks the distinct fills by the log-likelihood of the fill and the whole suffix after it
(the suffix is what the AR model cannot see when it writes). Reports per hole whether any
fill is exact (the most a ranking can reach) and whether the top-ranked one is.

Usage: PYTHONPATH=src python scripts/infill_rerank.py [--source humaneval] [--model code-diffusion]
       [--limit N] [--out rerank.json]
"""

from __future__ import annotations

import argparse
import json
import math

import paragen
from paragen.bench.infill import Hole, first_lines, humaneval_holes, normalised, parses, stdlib_holes
from paragen.bench.run import output_perplexity
from paragen.models.base import Model


def suffix_score(target: Model, hole: Hole, fill: str) -> float:
    """log p(fill + suffix | prefix) under the AR model: -n log(perplexity) of its n tokens."""
    tok = target.tokenizer
    before = len(tok.encode(hole.prefix))
    seq = tok.encode(hole.prefix + fill + hole.suffix)[: target.info.max_length]
    after = tuple(seq[before:])
    return -len(after) * math.log(output_perplexity(target, tuple(seq[:before]), after) or 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=("humaneval", "stdlib"), default="humaneval")
    ap.add_argument("--model", default="code-diffusion", help="full-attention diffusion model")
    ap.add_argument("--lengths", default="2-24", help="mask counts to try, LO-HI")
    ap.add_argument("--limit", type=int, default=None, help="first N single-line holes")
    ap.add_argument("--out", default="rerank.json")
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.lengths.split("-"))
    holes = [h for h in (humaneval_holes() if args.source == "humaneval" else stdlib_holes()) if h.kind == "single"]
    holes = holes[: args.limit] if args.limit else holes
    target, diffusion = paragen.load("code-target"), paragen.load(args.model)
    records = []
    for i, hole in enumerate(holes):
        fills = {first_lines(paragen.infill(diffusion, hole.prefix, hole.suffix, max_new_tokens=n, rule="prefix",
                                            threshold=0.9, cache="dual").text, 1) for n in range(lo, hi + 1)}
        ranked = sorted(((suffix_score(target, hole, f), f) for f in fills), reverse=True)
        truth = normalised(hole.hole)
        records.append(dict(id=hole.id, truth=hole.hole, fills=len(fills),
                            any_exact=any(normalised(f) == truth for f in fills),
                            top=ranked[0][1], top_exact=normalised(ranked[0][1]) == truth,
                            top_parses=parses(hole, ranked[0][1])))
        r = records[-1]
        print(f"{i + 1}/{len(holes)} {hole.id}: any exact {r['any_exact']}, top exact {r['top_exact']}", flush=True)
    summary = {k: sum(r[k] for r in records) for k in ("any_exact", "top_exact", "top_parses")}
    summary["holes"] = len(records)
    print(summary)
    with open(args.out, "w") as f:
        json.dump(dict(summary=summary, records=records), f, indent=1)


if __name__ == "__main__":
    main()
