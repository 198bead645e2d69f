"""Where a batch's time goes: prefill against the per-step cost of `ar`, at batch 1 and 16.

Times a generation of 1 and of 129 new tokens for the first B HumanEval prompts: the first
is the prefill (plus one step), the difference over 128 is one decode step. ``--profile``
then splits a decode step by operator: torch's profiler over a run of 1 and of 65 new tokens,
the difference per step (the profiler's own overhead inflates every operator a little, so
read the shares, not the sum). Run on a quiet machine:
``python scripts/batch_step.py [--threads 2] [--batch-sizes 1,16] [--profile]``.
"""

from __future__ import annotations

import argparse
import time

import torch

import paragen
from paragen.tasks import humaneval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--profile", action="store_true", help="also split a decode step by operator")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = paragen.load("code-target")
    per_step: dict[int, dict[str, float]] = {}
    for b in (int(x) for x in args.batch_sizes.split(",")):
        prompts = [t.prompt for t in humaneval()[:b]]
        paragen.generate(model, prompts, "ar", max_new_tokens=4)  # warm-up
        seconds = {}
        for n in (1, 129):
            t0 = time.perf_counter()
            paragen.generate(model, prompts, "ar", max_new_tokens=n)
            seconds[n] = time.perf_counter() - t0
        step = (seconds[129] - seconds[1]) / 128
        print(f"batch {b}: prefill + 1 step {seconds[1]:.3f} s, decode step {step * 1000:.2f} ms")
        if args.profile:
            per_step[b] = profile_step(model, prompts)
    if per_step:
        sizes = list(per_step)
        top = sorted(per_step[sizes[-1]], key=lambda k: -per_step[sizes[-1]][k])[:10]
        print("ms per decode step by operator: " + ", ".join(f"batch {b}" for b in sizes))
        for op in top:
            print(f"  {op[:48]:48s} " + "  ".join(f"{per_step[b].get(op, 0.0):7.3f}" for b in sizes))
        print(f"  {'all operators':48s} " + "  ".join(f"{sum(v for v in per_step[b].values() if v > 0):7.3f}"
                                                     for b in sizes))


def profile_step(model, prompts: list[str]) -> dict[str, float]:
    """Milliseconds per decode step of each operator (self time): profiled runs of 65 and of 1
    new tokens, their difference over 64 steps."""
    from torch.profiler import ProfilerActivity, profile

    def self_times(n: int) -> dict[str, float]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            paragen.generate(model, prompts, "ar", max_new_tokens=n)
        return {e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages()}

    one, many = self_times(1), self_times(65)
    return {op: (t - one.get(op, 0.0)) / 64 for op, t in many.items()}


if __name__ == "__main__":
    main()
