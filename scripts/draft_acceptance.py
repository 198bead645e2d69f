"""Acceptance rate of draft models against a target under `speculative` (k drafted tokens per step).

Counts, over held-out prompts (the first N HumanEval prompts and the first N held-out stdlib
prompts), how many drafted tokens the target accepts. Two rates, both printed:
- ``acceptance``: accepted / drafted tokens (every drafted token counts, also those after a
  rejection in the same chain, which can never be accepted); at k = 4 it is at most the
  mean accepted length / 4.
- ``alpha``: accepted / drafted tokens that were reached (position 1, or the one before was
  accepted): Leviathan et al.'s acceptance rate alpha, the chance that a token is accepted
  given its prefix was; the per-position values are these conditional rates.
The counts do not depend
on the machine's speed, so this runs on a busy machine; wall-clock speedup needs a quiet one
(`paragen bench --strategies ar,speculative --draft ...`).

Usage (from the repository root):
    PYTHONPATH=src python scripts/draft_acceptance.py --draft old=code-draft --draft new=runs/draft-wide-kl \
        --humaneval 20 --stdlib 20 --temperatures 0,0.8 --out out/acceptance.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import paragen
from paragen.tasks import humaneval, stdlib


def measure(target, draft, prompts: list[str], k: int, max_new_tokens: int, temperature: float, top_p: float | None,
            seed: int) -> dict:
    """Summed acceptance counts of one draft over the prompts, at one temperature."""
    proposed, accepted = [0] * k, [0] * k
    new_tokens = target_calls = 0
    for i, prompt in enumerate(prompts):
        sampling = {} if temperature == 0 else {"temperature": temperature, "top_p": top_p, "seed": seed + i}
        gen = paragen.generate(target, prompt, strategy="speculative", draft=draft, k=k, max_new_tokens=max_new_tokens,
                               **sampling)
        for j in range(k):
            proposed[j] += gen.stats.extra["proposed"][j]
            accepted[j] += gen.stats.extra["accepted"][j]
        new_tokens += gen.stats.new_tokens
        target_calls += gen.stats.target_calls
    reached = [proposed[0], *accepted[:-1]]  # a token is reached when the one before it was accepted
    return {
        "acceptance": sum(accepted) / max(1, sum(proposed)),
        "alpha": sum(accepted) / max(1, sum(reached)),
        "alpha_per_position": [a / r if r else None for a, r in zip(accepted, reached)],
        "tokens_per_call": new_tokens / max(1, target_calls),
        "proposed": proposed, "accepted": accepted, "new_tokens": new_tokens, "target_calls": target_calls,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="code-target")
    ap.add_argument("--draft", action="append", required=True, metavar="NAME=MODEL",
                    help="a draft to measure (built-in name or directory); repeat for several")
    ap.add_argument("--humaneval", type=int, default=20, help="first N HumanEval prompts")
    ap.add_argument("--stdlib", type=int, default=20, help="first N held-out stdlib prompts")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperatures", default="0,0.8", help="comma-separated; 0 is greedy")
    ap.add_argument("--top-p", type=float, default=0.95, help="nucleus for the sampled runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    target = paragen.load(args.target)
    drafts = {}
    for spec in args.draft:
        name, sep, path = spec.partition("=")
        if not sep:
            ap.error(f"--draft takes NAME=MODEL, got '{spec}'")
        drafts[name] = (path, paragen.load(path))
    sets = {"humaneval": [t.prompt for t in humaneval()[: args.humaneval]],
            "stdlib": [t.prompt for t in stdlib()[: args.stdlib]]}
    sets = {name: prompts for name, prompts in sets.items() if prompts}
    temps = [float(t) for t in args.temperatures.split(",")]
    results = []
    print(f"| draft | set | temperature | acceptance | alpha | alpha per position (1..{args.k}) | tokens/call |")
    print("|---|---|---|---|---|---|---|")
    for name, (path, draft) in drafts.items():
        for set_name, prompts in sets.items():
            for temp in temps:
                t0 = time.time()
                r = measure(target, draft, prompts, args.k, args.max_new_tokens, temp, args.top_p, args.seed)
                r.update(draft=name, model=path, set=set_name, prompts=len(prompts), temperature=temp,
                         seconds=round(time.time() - t0, 1))
                results.append(r)
                pos = " ".join("-" if p is None else f"{p:.2f}" for p in r["alpha_per_position"])
                print(f"| {name} | {set_name} ({len(prompts)}) | {temp:g} | {r['acceptance']:.3f} | {r['alpha']:.3f} | {pos} | "
                      f"{r['tokens_per_call']:.2f} |", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
