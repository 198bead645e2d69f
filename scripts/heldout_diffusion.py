"""Held-out bound and masked accuracy of diffusion models on the same windows, so models
trained on different data (a corpus, a model's continuations) and of different attention
(full, block-causal) compare on the same text.

Each model is scored by ``train diffusion``'s own evaluation (unconditional: no clean
prefix; the 1/t-weighted masked cross-entropy per token, an upper bound on NLL; a fixed
noise seed) with its own block size and shift, on fixed windows of one corpus's held-out
files (default: the standard library's, held out of every built corpus).

Usage: PYTHONPATH=src python scripts/heldout_diffusion.py code-diffusion runs/code-diffusion2 [--data runs/corpus-mix]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from paragen.models.io import load_native, resolve
from paragen.tokenizer import Tokenizer
from paragen.train.corpus import find_corpus
from paragen.train.diffusion import DiffusionTrainConfig, evaluate_diffusion
from paragen.train.lm import encode_files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="built-in names or model directories (one tokenizer)")
    ap.add_argument("--data", default=None, help="corpus directory (default: the standard library)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=64)
    args = ap.parse_args()
    dirs = [resolve(m) for m in args.models]
    tok = Tokenizer.from_dir(dirs[0])
    corpus = find_corpus(args.data)
    heldout = torch.from_numpy(encode_files(tok, [corpus.read(f) for f in corpus.heldout_files]).astype(np.int64))
    out = {}
    for name, d in zip(args.models, dirs):
        if Tokenizer.from_dir(d).fingerprint() != tok.fingerprint():
            raise SystemExit(f"{name}: another tokenizer than {args.models[0]}'s")
        model = load_native(d).float()
        c = model.config
        cfg = DiffusionTrainConfig(seq_len=args.seq_len, eval_windows=args.eval_windows, shift=c.shift,
                                   attention=c.attention, block_size=c.block_size, precision="fp32")
        with torch.no_grad():
            loss, acc = evaluate_diffusion(model, heldout, cfg, c.mask_token_id)
        out[name] = {"heldout_bound": round(loss, 4), "masked_accuracy": round(acc, 4)}
        print(f"{name:<34} bound {loss:.3f}  masked accuracy {acc:.3f}", flush=True)
    print(json.dumps({"data": str(corpus.root), "windows": args.eval_windows, "models": out}))


if __name__ == "__main__":
    main()
