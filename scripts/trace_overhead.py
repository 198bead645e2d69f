"""What tracing costs: seconds per generation with ``trace=False`` and ``trace=True``, interleaved.

    python scripts/trace_overhead.py [--strategies ar,lookahead,eagle,block_diffusion] [--reps 7] [--tokens 128]
    PYTHONPATH=OLD/src python scripts/trace_overhead.py --off-only   # a checkout without tracing, to compare "off"

Tracing off is the default path: each step tests ``ctx.trace`` (a few attribute tests per
step, tens of nanoseconds against a step of milliseconds), so "off" is the untraced speed;
the script also times that test alone to show the bound. Tracing on adds the recording:
a softmax over each call's logits rows for the probabilities, host copies, and the Call
objects. Medians over ``--reps`` interleaved runs after a warm-up; run on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch

import paragen

PROMPT = "import os\n\n\ndef walk_files(root):\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategies", default="ar,lookahead,eagle,block_diffusion")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--off-only", action="store_true",
                   help="never pass trace= (runs on a paragen without tracing: its times are the 'off' baseline)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    print(f"{'strategy':<16} {'tokens':>6} {'calls':>6} {'off s':>8} {'on s':>8} {'on/off':>7}")
    for name in args.strategies.split(","):
        model_name = "code-block-diffusion" if name == "block_diffusion" else "code-diffusion" if name == "diffusion" \
            else "code-target"
        if model_name not in models:
            models[model_name] = paragen.load(model_name)
        model = models[model_name]

        def run(trace: bool, model=model, name=name):
            if args.off_only:
                return paragen.generate(model, PROMPT, name, max_new_tokens=args.tokens)
            return paragen.generate(model, PROMPT, name, max_new_tokens=args.tokens, trace=trace)

        run(False), run(True)  # warm-up
        times = {False: [], True: []}
        for _ in range(args.reps):
            for trace in (False, True):
                t0 = time.perf_counter()
                gen = run(trace)
                times[trace].append(time.perf_counter() - t0)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:<16} {gen.stats.new_tokens:>6} {gen.stats.target_calls:>6} {off:>8.3f} {on:>8.3f} {on / off:>7.3f}")
    ctx = type("Ctx", (), {"trace": None})()
    check = min(timeit.repeat("if ctx.trace: pass", globals={"ctx": ctx}, number=100_000, repeat=5)) / 100_000
    print(f"tracing off: one `if ctx.trace:` test costs {check * 1e9:.0f} ns (a step makes 1-3 of them)")


if __name__ == "__main__":
    main()
