"""``paragen train``: the tokenizer and language-model training commands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from paragen.speech.cli import add_train_speech_parser
from paragen.train.flags import add_config_flags, add_stop_at, config_from_args, field_help, train_or_resume_hint
from paragen.train.lm import SIZES, TrainConfig


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a tokenizer or a model on Python source",
                       description="Train paragen's own models.")
    tsub = p.add_subparsers(dest="what", required=True,
                            metavar="{tokenizer,lm,diffusion,heads,distill,continuations,corpus,speech}")

    t = tsub.add_parser("tokenizer", help="train the byte-level BPE tokenizer",
                        description="Train a byte-level BPE tokenizer on the training split.")
    t.add_argument("--out", required=True, help="directory to write tokenizer.json into")
    t.add_argument("--data", default=None, help="directory of *.py files (default: the standard library)")
    t.add_argument("--vocab-size", type=int, default=4096, help="tokens in the vocabulary (default: 4096)")
    t.set_defaults(run=run_train_tokenizer)

    lm = tsub.add_parser(
        "lm", help="train a causal language model",
        description="Train a Llama-style causal LM with AdamW, warm-up + cosine decay, bf16 autocast, "
        "held-out evaluation and resumable checkpoints. Writes a Hugging Face layout model directory.",
    )
    defaults = TrainConfig()
    lm.add_argument("--size", choices=sorted(SIZES), default=defaults.size, help=field_help(TrainConfig, "size"))
    lm.add_argument("--out", required=True, help=field_help(TrainConfig, "out"))
    lm.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    add_stop_at(lm)
    lm.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(lm, TrainConfig, skip={"size", "out", "attention"})
    lm.set_defaults(run=run_train_lm)
    add_diffusion_parser(tsub)
    add_heads_parser(tsub)
    add_distill_parser(tsub)
    add_continuations_parser(tsub)
    add_corpus_parser(tsub)
    add_train_speech_parser(tsub)


def add_diffusion_parser(tsub: argparse._SubParsersAction) -> None:
    from paragen.train.diffusion import DiffusionTrainConfig

    d = tsub.add_parser(
        "diffusion", help="train a masked-diffusion model (bidirectional, or block-causal with --block-size)",
        description="Train a masked-diffusion LM (MDLM/LLaDA objective, clean random-length prefix) on the same "
        "tokenizer as the AR models; --block-size B trains a block-causal model for block_diffusion (BD3-LM). "
        "Same optimiser, schedule, checkpoints and budget as `train lm`.",
    )
    defaults = DiffusionTrainConfig()
    d.add_argument("--size", choices=sorted(SIZES), default=defaults.size,
                   help=field_help(DiffusionTrainConfig, "size") + " (ignored with --init)")
    d.add_argument("--out", required=True, help=field_help(DiffusionTrainConfig, "out"))
    d.add_argument("--block-size", type=int, default=None, help=field_help(DiffusionTrainConfig, "block_size"))
    d.add_argument("--init", default=None, help=field_help(DiffusionTrainConfig, "init"))
    d.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    add_stop_at(d)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(d, DiffusionTrainConfig, skip={"size", "out", "attention", "block_size", "init", "device"})
    d.set_defaults(run=run_train_diffusion)


def add_corpus_parser(tsub: argparse._SubParsersAction) -> None:
    from paragen.train.corpus import DEFAULT_PACKAGES

    c = tsub.add_parser(
        "corpus", help="build a corpus directory: the standard library and permissively licensed packages",
        description="Copy the standard library and the Python source of installed, permissively licensed packages "
        "(MIT/BSD/Apache/PSF-style, checked from their metadata) into DIR/<source>/..., deduplicated by content, "
        "with DIR/manifest.json (licences, versions, files, bytes, tokens per source). The held-out split is by "
        "path inside each source, so the standard library's held-out files stay held out. Use it with --data DIR.",
    )
    c.add_argument("--out", required=True, help="corpus directory to write (replaced atomically if it exists)")
    c.add_argument("--packages", default=",".join(DEFAULT_PACKAGES),
                   help="comma-separated distribution names; empty for the standard library alone (default: %(default)s)")
    c.add_argument("--tokenizer", default=None,
                   help="count tokens per source with this tokenizer or model directory (e.g. a built-in model's)")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    c.set_defaults(run=run_train_corpus)


def run_train_corpus(args: argparse.Namespace) -> int:
    from paragen.models.io import resolve
    from paragen.train.corpus import build_corpus, corpus_sources

    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    tokenizer = str(resolve(args.tokenizer)) if args.tokenizer and not os.path.isdir(args.tokenizer) else args.tokenizer
    manifest = build_corpus(args.out, corpus_sources(packages), tokenizer, progress=not args.quiet,
                            command="paragen " + " ".join(sys.argv[1:]))
    t = manifest["totals"]
    tokens = f", {t['tokens']['train']} + {t['tokens']['heldout']} tokens" if "tokens" in t else ""
    print(f"{args.out}: {len(manifest['sources'])} sources, {t['train_files']} train + {t['heldout_files']} held-out "
          f"files{tokens}")
    return 0


def add_distill_parser(tsub: argparse._SubParsersAction) -> None:
    from paragen.train.distill import DistillConfig

    d = tsub.add_parser(
        "distill", help="train a draft model on a target's logits (KL distillation)",
        description="Train a draft LM to agree with a target: KL(p_target || q_draft) on the target's logits, "
        "optionally softened by --temperature and mixed with the data cross-entropy (--ce-weight); the teacher "
        "is frozen and its tokenizer is used. Same loop, data, checkpoints and budget as `train lm`; held-out "
        "metrics: KL to the target and agreement of the argmaxes (the greedy acceptance proxy).",
    )
    defaults = DistillConfig()
    d.add_argument("--size", choices=sorted(SIZES), default=defaults.size, help="the draft's shape")
    d.add_argument("--out", required=True, help="output model directory")
    d.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    add_stop_at(d)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(d, DistillConfig, skip={"size", "out", "attention", "tokenizer", "vocab_size", "device"})
    d.set_defaults(run=run_train_distill)


def add_continuations_parser(tsub: argparse._SubParsersAction) -> None:
    from paragen.train.continuations import ContinuationsConfig

    c = tsub.add_parser(
        "continuations", help="write a model's own continuations of corpus prompts, as a corpus (for distill)",
        description="Cut prompts (--min/--max-prompt-tokens long, ending at a line end) from a corpus's training "
        "files, continue each with --model (batched ar, greedy by default) and write prompt + continuation as one "
        "file per prompt, with continuations.json (settings, each file's source). The result is a corpus: `paragen train distill "
        "--data DIR` then learns the target's logits on the target's own text (--model the target: sequence-level "
        "distillation) or on the draft's (--model the draft: on-policy data).",
    )
    c.add_argument("--resume", action="store_true", help="keep the batches an interrupted run finished")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(c, ContinuationsConfig, skip=set())
    c.set_defaults(run=run_train_continuations)


def run_train_continuations(args: argparse.Namespace) -> int:
    from paragen.train.continuations import ContinuationsConfig, write_continuations

    cfg = config_from_args(ContinuationsConfig, args)
    rec = write_continuations(cfg, resume=args.resume, progress=not args.quiet,
                              command="paragen " + " ".join(sys.argv[1:]))
    dropped = f", {rec['prompts'] - rec['files']} looping ones left out" if cfg.drop_loops else ""
    print(f"{cfg.out}: {rec['files']} prompts ({rec['prompt_tokens']} tokens) continued by {cfg.model} with "
          f"{rec['new_tokens']} tokens; {rec['looping']} of {rec['prompts']} continuations end in a loop{dropped}")
    return 0


def run_train_distill(args: argparse.Namespace) -> int:
    from paragen.train.distill import DistillConfig, train_distill

    cfg = config_from_args(DistillConfig, args)
    rec = train_or_resume_hint(train_distill, cfg, args)
    if rec is None:
        return 130
    print(f"{cfg.out}: {rec['parameters'] / 1e6:.2f}M parameters, {rec['tokens_seen']} tokens, heldout KL to the "
          f"teacher {rec['heldout_kl']:.3f}, agreement {rec['heldout_agreement']:.3f}, data loss "
          f"{rec['heldout_loss']:.3f}, accuracy {rec['heldout_accuracy']:.3f}")
    return 0


def run_train_diffusion(args: argparse.Namespace) -> int:
    from paragen.train.diffusion import DiffusionTrainConfig, train_diffusion

    cfg = config_from_args(DiffusionTrainConfig, args, attention="block_causal" if args.block_size else "bidirectional")
    rec = train_or_resume_hint(train_diffusion, cfg, args)
    if rec is None:
        return 130
    print(f"{cfg.out}: {rec['parameters'] / 1e6:.2f}M parameters, {rec['tokens_seen']} tokens, "
          f"heldout loss (bound) {rec['heldout_loss']:.3f}, masked accuracy {rec['heldout_accuracy']:.3f}")
    return 0


def add_heads_parser(tsub: argparse._SubParsersAction) -> None:
    from paragen.flags import add_threads_flag
    from paragen.heads import KINDS
    from paragen.train.heads import HeadsTrainConfig

    h = tsub.add_parser(
        "heads", help="train prediction heads (blockwise, medusa, hydra, eagle) on a frozen target",
        description="Train prediction heads on a frozen target, labelled by the target's own predictions on corpus "
        "windows (one target forward per window). Same optimiser, schedule, checkpoints and budget as `train lm`; "
        "writes a small heads directory that names its target.",
    )
    h.add_argument("--kind", choices=KINDS, required=True, help="head architecture")
    h.add_argument("--target", required=True, help="built-in model name or model directory (frozen)")
    h.add_argument("--out", required=True, help="output heads directory")
    h.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    add_stop_at(h)
    h.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(h, HeadsTrainConfig, skip={"kind", "target", "out", "size", "tokenizer", "vocab_size", "attention"})
    add_threads_flag(h, default=None)
    h.set_defaults(run=run_train_heads)


def run_train_heads(args: argparse.Namespace) -> int:
    from paragen.flags import command_threads
    from paragen.train.heads import HeadsTrainConfig, train_heads

    cfg = config_from_args(HeadsTrainConfig, args)
    with command_threads(args):
        rec = train_or_resume_hint(train_heads, cfg, args)
    if rec is None:
        return 130
    accs = " ".join(f"{a:.3f}" for a in rec["per_head_accuracy"])
    print(f"{cfg.out}: {cfg.kind} heads, {rec['parameters'] / 1e6:.2f}M parameters, {rec['tokens_seen']} tokens, "
          f"heldout loss {rec['heldout_loss']:.3f}, top-1 agreement with the target per head {accs}")
    return 0


def run_train_tokenizer(args: argparse.Namespace) -> int:
    from paragen.train.corpus import find_corpus
    from paragen.train.tokenizer import train_tokenizer

    corpus = find_corpus(args.data)
    tok = train_tokenizer(corpus.texts("train"), args.vocab_size)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tok.save(args.out)
    print(f"tokenizer with {tok.vocab_size} tokens written to {args.out}")
    return 0


def run_train_lm(args: argparse.Namespace) -> int:
    from paragen.train.lm import train_lm

    cfg = config_from_args(TrainConfig, args)
    rec = train_or_resume_hint(train_lm, cfg, args)
    if rec is None:
        return 130
    print(f"{cfg.out}: {rec['parameters'] / 1e6:.2f}M parameters, {rec['tokens_seen']} tokens, "
          f"heldout loss {rec['heldout_loss']:.3f}, accuracy {rec['heldout_accuracy']:.3f}")
    return 0
