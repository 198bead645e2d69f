"""Detokenisation cost per token in the driver's ``Row`` (stopping and streaming included).

Feeds ``Row.add`` a fixed random stream of the built-in tokenizer's tokens, a few tokens per
step as a speculative step would commit them, with two stop strings that never match (the
worst case: every step searches), and reports microseconds per token at each output length.

    python scripts/detok_cost.py [--lengths 250,1000,2048] [--per-step 3]
"""

from __future__ import annotations

import argparse
import random
import time

from paragen.driver import Row
from paragen.models.io import resolve
from paragen.tokenizer import Tokenizer


def cost(tokenizer: Tokenizer, n: int, per_step: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    tokens = [rng.randrange(2, tokenizer.vocab_size) for _ in range(n)]
    best = float("inf")
    for _ in range(3):
        row = Row("ar", n, tokenizer, eos_ids=(), stop=("\x00never\x00", "\x01nor this"))
        t = time.perf_counter()
        for i in range(0, n, per_step):
            row.add(tokens[i : i + per_step])
        best = min(best, time.perf_counter() - t)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="250,1000,2048")
    ap.add_argument("--per-step", type=int, default=3)
    args = ap.parse_args()
    tokenizer = Tokenizer.from_dir(resolve("code-target"))
    for n in map(int, args.lengths.split(",")):
        print(f"{n:>5} new tokens: {cost(tokenizer, n, args.per_step):8.1f} us per token")


if __name__ == "__main__":
    main()
