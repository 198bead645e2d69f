"""The training commands' shared flags: one ``--flag`` per config field, the config back from
the flags, ``--stop-at``, and what Ctrl-C prints.

A leaf of the command line: ``paragen.train.cli`` and ``paragen.speech.cli`` import it; it
imports neither.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any


def field_help(config_cls: type, name: str) -> str:
    """A config field's help (its metadata), for flags the command defines itself."""
    return next(f for f in fields(config_cls) if f.name == name).metadata["help"]


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, skip: set[str]) -> None:
    """One ``--flag`` per config field: the dataclass is the one place its default, type,
    help (``metadata["help"]``) and allowed values (``metadata["choices"]``) live."""
    hints = typing.get_type_hints(config_cls)
    for f in fields(config_cls):
        if f.name in skip:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if f.default is False:  # a switch, off by default
            parser.add_argument(flag, action="store_true", default=None, help=text)
            continue
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        if f.default is not None:
            text += f" (default: {f.default})"
        parser.add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"), help=text)


def config_from_args(config_cls: type, args: argparse.Namespace, **fixed) -> object:
    """The config with every flag the user gave; the dataclass defaults for the rest."""
    kw = {f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name, None) is not None}
    return config_cls(**{**kw, **fixed})


def add_stop_at(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stop-at", type=int, default=None, metavar="N",
                        help="end after step N of --steps (the schedule stays that of --steps): the model is saved "
                        "and --resume continues; for comparing runs at equal steps, or training in chunks")


def interrupted(out: str) -> int:
    """After Ctrl-C: one line saying how to continue (the last checkpoint is left as it was:
    checkpoints are replaced atomically, and a half-done step is never saved). Exit 130."""
    out_path = Path(out)
    checkpoint = out_path.parent / f".{out_path.name}.work" / "checkpoint.pt"
    argv = sys.argv[1:] + ([] if "--resume" in sys.argv else ["--resume"])
    if checkpoint.exists():
        print(f"paragen: interrupted; the last checkpoint is {checkpoint}: continue with "
              f"`paragen {shlex.join(argv)}`", file=sys.stderr)
    else:
        print("paragen: interrupted before the first checkpoint (see --checkpoint-every): nothing to resume",
              file=sys.stderr)
    return 130


def train_or_resume_hint(train: Callable[..., dict], cfg: Any, args: argparse.Namespace) -> dict | None:
    """Run one of the training commands (lm, diffusion, distill, heads: same flags, same loop);
    after Ctrl-C, say how to continue (``interrupted``) and return None."""
    try:
        return train(cfg, resume=args.resume, progress=not args.quiet, command="paragen " + " ".join(sys.argv[1:]),
                     stop_at=args.stop_at)
    except KeyboardInterrupt:
        interrupted(cfg.out)
        return None
