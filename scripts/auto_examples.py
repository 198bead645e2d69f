"""auto's segments on three prompts, and what a switch costs (run on a quiet machine, 2 threads).

    PYTHONPATH=src python scripts/auto_examples.py

A switch's cost: a candidate's step right after 8 ``ar`` steps (its draft model catches up on
the 8 tokens it missed, EAGLE's drafter is fed their 8 features) against its steady steps.
"""

from __future__ import annotations

import statistics

import torch

import paragen
from paragen.tasks import humaneval

PROMPTS = {
    "HumanEval/2": None,  # filled from the task set
    "repeating": "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
                 "    def __add__(self, other):\n        return Point(self.x + other.x, self.y + other.y)\n\n"
                 "    def __sub__(self, other):\n",
    "stdlib-like": "import json\nimport os\n\n\ndef load_config(path):\n"
                   "    \"\"\"Read a JSON config file, or return an empty dict when it is missing.\"\"\"\n",
}


def main() -> None:
    torch.set_num_threads(2)
    target, draft = paragen.load("code-target"), paragen.load("code-draft")
    PROMPTS["HumanEval/2"] = humaneval()[2].prompt
    paragen.generate(target, "def f(x):", "auto", max_new_tokens=16, draft=draft)  # warm-up and calibration
    for name, prompt in PROMPTS.items():
        g = paragen.generate(target, prompt, "auto", max_new_tokens=128, draft=draft)
        ar = paragen.generate(target, prompt, "ar", max_new_tokens=128)
        info = g.stats.extra["auto"]
        print(f"{name}: {g.stats.tokens_per_call:.2f} tokens/call, {g.stats.seconds:.3f} s against ar "
              f"{ar.stats.seconds:.3f} s ({ar.stats.seconds / g.stats.seconds:.2f}x); same tokens: {g.tokens == ar.tokens}")
        print("   ", " -> ".join(f"{s['strategy']} x{s['steps']} ({s['tokens']} tokens)" for s in info["segments"]))
        print(f"    call costs measured in {info['costs']['measured_seconds']} s")
    prompt = PROMPTS["HumanEval/2"]
    for cand in ("speculative", "eagle", "tree"):
        after, steady = [], []
        for _ in range(3):
            g = paragen.generate(target, prompt, "auto", max_new_tokens=128, draft=draft, schedule=f"ar:8,{cand}:1")
            after += [s["seconds"] / s["steps"] for s in g.stats.extra["auto"]["segments"] if s["strategy"] == cand]
            g = paragen.generate(target, prompt, "auto", max_new_tokens=128, draft=draft, schedule=f"{cand}:1")
            steady += [s["seconds"] / s["steps"] for s in g.stats.extra["auto"]["segments"]]
        print(f"switch to {cand} after 8 ar steps: {statistics.median(after) * 1e3:.2f} ms/step, "
              f"steady {statistics.median(steady) * 1e3:.2f} ms/step")


if __name__ == "__main__":
    main()
