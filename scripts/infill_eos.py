"""Does a diffusion model know where a hole ends? Teacher-forced on the infilling bench's holes.

For each single-line HumanEval hole the canvas is the prefix, the true hole, masks up to 64
hole tokens, then the suffix: the state the left-to-right ``prefix`` rule is in when it has
written the hole exactly. Prints the model's end-of-text probability at the first position
after the hole (where a model trained with ``--infill`` should close it), its mean, how often
it is the argmax, and its median rank.

Usage: PYTHONPATH=src python scripts/infill_eos.py code-diffusion [runs/infill4 ...] [--holes 37]
"""

from __future__ import annotations

import argparse

import torch

import paragen
from paragen.bench.infill import humaneval_holes
from paragen.infilling import DEFAULT_HOLE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--holes", type=int, default=37, help="the first N single-line holes")
    args = ap.parse_args()
    holes = [h for h in humaneval_holes() if h.kind == "single"][: args.holes]
    for name in args.models:
        model = paragen.load(name)
        tok, info = model.tokenizer, model.info
        eos, probs, ranks = info.eos_ids[0], [], []
        for h in holes:
            before, hole, after = tok.encode(h.prefix), tok.encode(h.hole), tok.encode(h.suffix)
            seq = before + hole + [info.mask_id] * max(0, DEFAULT_HOLE - len(hole)) + after
            with torch.inference_mode():
                logits = model(torch.tensor([seq]), torch.arange(len(seq))[None])[0]
            # a shifted model's logits at q predict q + 1; the mask token is never emitted
            z = logits[len(before) + len(hole) - 1 if info.shift else len(before) + len(hole)].double()
            z[info.mask_id] = float("-inf")
            p = torch.softmax(z, -1)
            probs.append(float(p[eos]))
            ranks.append(int((p > p[eos]).sum()))
        print(f"{name}: end-of-text at the true end of {len(holes)} holes: mean p {sum(probs) / len(probs):.4f}, "
              f"argmax {sum(r == 0 for r in ranks)}/{len(ranks)}, median rank {sorted(ranks)[len(ranks) // 2]}")


if __name__ == "__main__":
    main()
