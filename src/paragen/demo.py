"""``make demo``: the built-in models on a HumanEval prompt, every lossless strategy, with stats.

Run with ``python -m paragen.demo [--prompt-index I] [--max-new-tokens N]``.
"""

from __future__ import annotations

import argparse

import paragen
from paragen.models.io import builtin_models
from paragen.tasks import humaneval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paragen.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-index", type=int, default=2, help="which HumanEval prompt (0-163)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    missing = {"code-target", "code-draft"} - set(builtin_models())
    if missing:
        raise SystemExit(f"built-in models missing: {', '.join(sorted(missing))} (see README: paragen train lm)")
    target, draft = paragen.load("code-target"), paragen.load("code-draft")
    task = humaneval()[args.prompt_index]
    print(f"== {task.id}: prompt ==\n{task.prompt}")
    runs = [("ar", {}), ("speculative", {"draft": draft}), ("lookup", {}), ("jacobi", {}), ("lookahead", {})]
    results = []
    for name, extra in runs:
        paragen.generate(target, task.prompt, name, max_new_tokens=8, **extra)  # warm-up, not timed
        results.append((name, paragen.generate(target, task.prompt, name, max_new_tokens=args.max_new_tokens, **extra)))
    base = results[0][1]
    print(f"== completion by code-target (greedy, {base.stats.new_tokens} tokens) ==\n{base.text}\n")
    print(f"{'strategy':<12} {'tokens':>6} {'calls':>6} {'tok/call':>8} {'tok/s':>8} {'speedup':>8}  same as ar")
    for name, gen in results:
        s = gen.stats
        print(f"{name:<12} {s.new_tokens:>6} {s.target_calls:>6} {s.tokens_per_call:>8.2f} {s.tokens_per_second:>8.1f} "
              f"{base.stats.seconds / s.seconds:>7.2f}x  {gen.tokens == base.tokens}")
    print("\nOne prompt, one run: see BENCHMARKS.md for measured averages (paragen bench).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
