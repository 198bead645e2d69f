"""``paragen train``: the tokenizer and language-model training commands."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from paragen.train.lm import SIZES, TrainConfig


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a tokenizer or a model on Python source", description="Train paragen's own models.")
    tsub = p.add_subparsers(dest="what", required=True, metavar="{tokenizer,lm}")

    t = tsub.add_parser("tokenizer", help="train the byte-level BPE tokenizer", description="Train a byte-level BPE tokenizer on the training split.")
    t.add_argument("--out", required=True, help="directory to write tokenizer.json into")
    t.add_argument("--data", default=None, help="directory of *.py files (default: the standard library)")
    t.add_argument("--vocab-size", type=int, default=4096)

    lm = tsub.add_parser(
        "lm", help="train a causal language model",
        description="Train a Llama-style causal LM with AdamW, warm-up + cosine decay, bf16 autocast, "
        "held-out evaluation and resumable checkpoints. Writes a Hugging Face layout model directory.",
    )
    defaults = TrainConfig()
    lm.add_argument("--size", choices=sorted(SIZES), default=defaults.size, help="model shape")
    lm.add_argument("--out", required=True, help="output model directory")
    lm.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    lm.add_argument("--quiet", action="store_true", help="no progress bar")
    skip = {"size", "out"}
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        kind = type(f.default) if f.default is not None else (float if f.name == "minutes" else int if f.name == "max_files" else str)
        lm.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None, help=f"default: {f.default}")


def run_train(args: argparse.Namespace) -> int:
    if args.what == "tokenizer":
        from pathlib import Path

        from paragen.train.corpus import find_corpus
        from paragen.train.tokenizer import train_tokenizer

        corpus = find_corpus(args.data)
        tok = train_tokenizer(corpus.texts("train"), args.vocab_size)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        tok.save(args.out)
        print(f"tokenizer with {tok.vocab_size} tokens written to {args.out}")
        return 0
    from paragen.train.lm import train_lm

    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    cfg = TrainConfig(**kw)
    rec = train_lm(cfg, resume=args.resume, progress=not args.quiet, command="paragen " + " ".join(sys.argv[1:]))
    print(f"{cfg.out}: {rec['parameters'] / 1e6:.2f}M parameters, {rec['tokens_seen']} tokens, "
          f"heldout loss {rec['heldout_loss']:.3f}, accuracy {rec['heldout_accuracy']:.3f}")
    return 0
