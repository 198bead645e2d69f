"""What the subcommands share: options help for ``--help`` epilogs, the flags every decoding
command has (``--threads``, how models load), ``-o KEY=VALUE`` options, and the heads check.

A leaf of the command line: ``paragen.cli`` and the subcommands (``bench``, ``serve``,
``batch``, ``train``, ``transcribe``) import it; it imports none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Any

from paragen.errors import InvalidInputError

# --compile's values -> paragen.load's compile
COMPILE_FLAGS: dict[str, bool | str] = {"off": False, "on": True, "auto": "auto"}


def options_help(cls: Any, indent: str = "      ") -> list[str]:
    """One line per field of ``cls.Options``: ``name=default  help`` (the help lives in the
    field's metadata, the one place an option is described)."""
    rows = [(f"{f.name}={f.default}", f.metadata.get("help", "")) for f in dataclasses.fields(cls.Options)]
    if not rows:
        return [f"{indent}(no options)"]
    width = max(len(a) for a, _ in rows)
    return [f"{indent}{a:<{width}}  {h}".rstrip() for a, h in rows]


def strategy_help() -> str:
    """The strategies and their options, for ``--help`` epilogs."""
    from paragen.strategies import STRATEGIES

    lines = []
    for name, cls in STRATEGIES.items():
        lines.append(f"  {name:<16}{cls.summary}")
        lines += options_help(cls)
    return "strategies and their options (-o KEY=VALUE; booleans: true/false, 1/0, yes/no):\n" + "\n".join(lines)


def parse_options(items: list[str], what: str = "strategy option") -> dict[str, str]:
    """``-o KEY=VALUE`` flags as a dict (values stay strings; ``make_options`` coerces them)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"{what} '{item}' must look like KEY=VALUE")
        options[key.replace("-", "_")] = value
    return options


def add_threads_flag(p: argparse.ArgumentParser, default: int | None) -> None:
    """``--threads``: torch CPU threads for the command's duration, the same flag everywhere.
    Decoding commands default to ``DEFAULT_THREADS`` (see ``paragen.threads``); training (None)
    to torch's choice, since its large matmuls use every core."""
    said = f"default: {default}" if default is not None else "default: torch's choice, every core"
    p.add_argument("--threads", type=int, default=default,
                   help=f"torch CPU threads for this command ({said}; for decoding, more rarely helps batch-1 "
                   "decoding of small models, and hurts badly on a busy machine)")


def command_threads(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The block runs on ``--threads`` torch threads (torch's choice when not given)."""
    from paragen.threads import torch_threads

    if args.threads is None:
        return contextlib.nullcontext()
    if args.threads < 1:
        raise InvalidInputError(f"--threads must be an integer >= 1, got {args.threads}")
    return torch_threads(args.threads)


def add_model_flags(p: argparse.ArgumentParser, dtype_note: str = "") -> None:
    """``--backend``, ``--dtype``, ``--compile``, ``--device``: how the models load, the same in
    generate, serve and bench (``paragen.load``'s arguments)."""
    from paragen.models import BACKENDS, DTYPE_CHOICES, DTYPE_HELP

    p.add_argument("--backend", choices=BACKENDS, default="native",
                   help="native (paragen's own, fast), hf (transformers) or llamacpp (llama.cpp on a GGUF of the "
                        "model; --dtype fp16-weights / int8-weights: f16 / q8_0 GGUF) (default: native)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                   help=f"weights' dtype or format{dtype_note}: {DTYPE_HELP}")
    # Two flags rather than an optional value: `--compile PROMPT` must not read the prompt as one.
    p.add_argument("--compile", dest="compile", action="store_const", const="on", default="off",
                   help="compile the native decode step (torch.compile on a few padded call sizes; each graph "
                        "compiles at its first call, seconds each, cached on disk by torch)")
    p.add_argument("--compile-auto", dest="compile", action="store_const", const="auto",
                   help="compile each graph of the decode step only once its calls have run long enough eagerly "
                        "to repay the compile")
    p.add_argument("--device", default="cpu", help="where the models run: cpu, cuda, cuda:N (default: cpu)")


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``paragen.load``'s arguments from ``add_model_flags``' flags."""
    return dict(backend=args.backend, dtype=args.dtype, compile=COMPILE_FLAGS[args.compile], device=args.device)


def check_heads_found(cls: Any, model: Any, heads: Any) -> None:
    """A heads strategy without --heads runs on the model's built-in heads: say so when there are none."""
    from paragen.errors import HeadsMismatchError
    from paragen.heads.io import default_heads

    if cls.head_kinds and heads is None and default_heads(model, cls.head_kinds) is None:
        raise HeadsMismatchError(f"--strategy {cls.name} needs prediction heads ({' or '.join(cls.head_kinds)}) and "
                                 f"--model {model.name} has none built in: add --heads DIR (from `paragen train heads`)")
