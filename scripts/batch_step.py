"""Where a batch's time goes: prefill against the per-step cost of `ar`, at batch 1 and 16.

Times a generation of 1 and of 129 new tokens for the first B HumanEval prompts: the first
is the prefill (plus one step), the difference over 128 is one decode step. Run on a quiet
machine: ``python scripts/batch_step.py [--threads 2] [--batch-sizes 1,16]``.
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = paragen.load("code-target")
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


if __name__ == "__main__":
    main()
