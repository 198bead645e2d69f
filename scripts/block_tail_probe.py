"""How block-diffusion models do in the state the left-to-right ``prefix`` rule decodes in:
every block clean up to offset k and masked from it, the blocks before it clean (teacher
forcing on real held-out text, every k of 0..B-1, all blocks of a window at once).

Per model, averaged over k and over the held-out windows:
- ``agree``: the first masked position's argmax is the target's greedy token there (the
  token ``ar`` on the target would write in that context): how far the model's one-token
  commits, which are most of its commits, stray from ``ar``.
  ``agree_by_offset``: the same for each k (k = 0 is a block's first position, predicted
  from the finished block before it: plain next-token prediction).
- ``correct``: that argmax is the true next token; the target's own rate is given beside.
- ``ahead_confident`` / ``ahead_right``: the share of second masked positions (offset k + 1)
  with max probability >= 0.9, and how often such a confident guess is the true token
  (a prefix-rule commit beyond the first token is made on that confidence).

Usage: PYTHONPATH=src python scripts/block_tail_probe.py code-block-diffusion runs/block5d [--windows 32]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from paragen.models.io import load_native, resolve
from paragen.tokenizer import Tokenizer
from paragen.train.corpus import find_corpus
from paragen.train.diffusion import denoise_logits
from paragen.train.lm import encode_files


@torch.no_grad()
def probe(model, target, windows: torch.Tensor, confident: float = 0.9) -> dict[str, float]:
    c = model.config
    B, shift = c.block_size, bool(c.shift)
    n, L = windows.shape
    off = torch.arange(L) % B
    # the target's greedy token at every position p >= 1 (its logits at p - 1)
    greedy = torch.cat([torch.zeros(n, 1, dtype=torch.long),
                        target(windows, torch.arange(L).expand(n, -1))[:, :-1].argmax(-1)], 1)
    sums = dict(agree=0, correct=0, target_correct=0, first=0, ahead=0, ahead_confident=0, ahead_right=0)
    by_offset = []
    for k in range(B):
        xt = torch.where(off >= k, c.mask_token_id, windows)
        probs = denoise_logits(model, xt, windows, B, shift).float().softmax(-1)
        top, arg = probs.max(-1)
        first = (off == k) & (torch.arange(L) >= int(shift) + B)  # skip the first block (no clean block before)
        agree = int((arg == greedy)[:, first].sum())
        sums["agree"] += agree
        by_offset.append(round(agree / (int(first.sum()) * n), 3))
        sums["correct"] += int((arg == windows)[:, first].sum())
        sums["target_correct"] += int((greedy == windows)[:, first].sum())
        sums["first"] += int(first.sum()) * n
        if k + 1 < B:
            nxt = (off == k + 1) & (torch.arange(L) >= B)
            sure = top[:, nxt] >= confident
            sums["ahead"] += int(nxt.sum()) * n
            sums["ahead_confident"] += int(sure.sum())
            sums["ahead_right"] += int(((arg == windows)[:, nxt] & sure).sum())
    return {
        "agree": sums["agree"] / sums["first"],
        "correct": sums["correct"] / sums["first"],
        "target_correct": sums["target_correct"] / sums["first"],
        "ahead_confident": sums["ahead_confident"] / sums["ahead"],
        "ahead_right": sums["ahead_right"] / max(1, sums["ahead_confident"]),
        "agree_by_offset": by_offset,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="block-diffusion models (built-in names or directories)")
    ap.add_argument("--target", default="code-target", help="the AR model whose greedy tokens are compared")
    ap.add_argument("--data", default=None, help="corpus directory (default: the standard library's held-out files)")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    target = load_native(resolve(args.target)).float().eval()
    tok = Tokenizer.from_dir(resolve(args.target))
    corpus = find_corpus(args.data)
    ids = encode_files(tok, [corpus.read(f) for f in corpus.heldout_files])
    starts = np.linspace(0, len(ids) - args.seq_len - 1, args.windows).astype(int)
    windows = torch.stack([torch.from_numpy(ids[s : s + args.seq_len].astype(np.int64)) for s in starts])
    out = {}
    for name in args.models:
        d = resolve(name)
        if Tokenizer.from_dir(d).fingerprint() != tok.fingerprint():
            raise SystemExit(f"{name}: another tokenizer than {args.target}'s")
        model = load_native(d).float().eval()
        if not model.config.block_size:
            raise SystemExit(f"{name}: not a block-diffusion model")
        out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in probe(model, target, windows).items()}
        print(name, out[name], flush=True)
    print(json.dumps({"data": str(corpus.root), "windows": args.windows, "seq_len": args.seq_len, "models": out}))


if __name__ == "__main__":
    main()
