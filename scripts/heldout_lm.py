"""Held-out loss and next-token accuracy of language models on `train lm`'s fixed held-out
windows, so that models trained on different corpora compare on the same text.

The windows come from one corpus (default: the standard library, whose held-out files are
held out of every built corpus too, see paragen.train.corpus), evenly spaced over its
held-out token stream; every model must share the first model's tokenizer.

Usage: PYTHONPATH=src python scripts/heldout_lm.py code-target runs/code-target2 [--data runs/corpus] [--eval-windows 256]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from paragen.models.io import load_native, resolve
from paragen.tokenizer import Tokenizer
from paragen.train.corpus import find_corpus
from paragen.train.lm import TrainConfig, encode_files, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="built-in names or model directories (one tokenizer)")
    ap.add_argument("--data", default=None, help="corpus directory (default: the standard library)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=64, help="64: the windows `train lm` reports")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dirs = [resolve(m) for m in args.models]
    fingerprints = {Tokenizer.from_dir(d).fingerprint() for d in dirs}
    if len(fingerprints) > 1:
        raise SystemExit("the models have different tokenizers: held-out windows would not be the same text")
    cfg = TrainConfig(data=args.data, seq_len=args.seq_len, eval_windows=args.eval_windows)
    corpus = find_corpus(args.data)  # the held-out stream exactly as `train lm` builds it
    ids = encode_files(Tokenizer.from_dir(dirs[0]), [corpus.read(f) for f in corpus.heldout_files])
    heldout = torch.from_numpy(ids.astype(np.int64))
    for name, d in zip(args.models, dirs):
        loss, accuracy = evaluate(load_native(d), heldout, cfg)
        print(json.dumps({"model": name, "corpus": str(corpus.root), "heldout_files": len(corpus.heldout_files),
                          "windows": min(args.eval_windows, (len(heldout) - 1) // args.seq_len),
                          "heldout_loss": round(loss, 4), "heldout_accuracy": round(accuracy, 4)}), flush=True)


if __name__ == "__main__":
    main()
