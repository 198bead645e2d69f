"""The ``paragen`` command line: generate, models, train, bench, serve, trace."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from paragen.errors import ParagenError
from paragen.flags import (
    add_model_flags,
    add_threads_flag,
    check_heads_found,
    command_threads,
    load_kwargs,
    parse_options,
    strategy_help,
)
from paragen.threads import DEFAULT_THREADS


def check_generate_flags(cls: type, args: argparse.Namespace, prompt: str | list[int]) -> None:
    """``generate``'s flags against each other and the strategy, before anything loads, in the
    flags' own words (the API says the same in its arguments' words)."""
    from paragen.errors import HeadsMismatchError, InvalidInputError, UnsupportedOptionError
    from paragen.models.io import resolve
    from paragen.speech.model import is_speech_model
    from paragen.strategies import STRATEGIES
    from paragen.tokenizer import has_tokenizer

    name = f"--strategy {cls.name}"
    if args.temperature and not cls.supports_sampling:
        raise UnsupportedOptionError(f"{name} is greedy-only: use --temperature 0, or a strategy that samples")
    if cls.needs_draft and args.draft is None:
        raise InvalidInputError(f"{name} needs a draft model: add --draft NAME_OR_DIR (e.g. --draft code-draft)")
    if not cls.needs_draft and not cls.takes_draft and args.draft is not None:
        drafted = ", ".join(n for n, c in STRATEGIES.items() if c.needs_draft)
        raise UnsupportedOptionError(f"{name} uses no draft model: drop --draft, or pick one that does ({drafted})")
    if not (cls.head_kinds or cls.takes_heads) and args.heads is not None:
        headed = ", ".join(n for n, c in STRATEGIES.items() if c.head_kinds)
        raise HeadsMismatchError(f"{name} uses no prediction heads: drop --heads, or pick one that does ({headed})")
    for flag, value, ok, need in (("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, "an integer >= 1"),
                                  ("--temperature", args.temperature, 0 <= args.temperature < math.inf,
                                   "a finite number >= 0"),
                                  ("--top-k", args.top_k, args.top_k is None or args.top_k >= 1, "an integer >= 1"),
                                  ("--top-p", args.top_p, args.top_p is None or 0 < args.top_p <= 1, "in (0, 1]")):
        if not ok:
            raise InvalidInputError(f"{flag} must be {need}, got {value}")
    if args.backend == "llamacpp" and str(args.model).endswith(".gguf"):
        return  # a GGUF file: the llamacpp backend checks it (and reads a tokenizer beside it)
    path = resolve(args.model)
    if is_speech_model(path):
        raise InvalidInputError(f"--model {args.model} is a speech model: transcribe audio with "
                                f"`paragen transcribe FILE.wav --model {args.model}`")
    if isinstance(prompt, str) and not has_tokenizer(path):
        raise InvalidInputError(f"--model {args.model} has no tokenizer files, so no text prompt: give the prompt as "
                                "token ids with --prompt-ids 1,2,3")


# ---------------------------------------------------------------- generate


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="continue a prompt with a decoding strategy",
        description="Continue PROMPT with a model and a decoding strategy; print the text (or JSON with stats).",
        epilog=strategy_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", default=None,
                   help="prompt text, or - to read it (UTF-8) from standard input; a prompt of only whitespace is "
                   "continued as given (for code, indentation and newlines are content)")
    p.add_argument("--prompt-ids", default=None, metavar="ID,ID,...",
                   help="the prompt as comma-separated token ids instead of text (for a model directory without "
                   "tokenizer files; the output is then token ids too)")
    p.add_argument("--model", default="code-target",
                   help="built-in model name or Hugging Face model directory (default: code-target)")
    add_model_flags(p)
    p.add_argument("--strategy", default="ar", help="decoding strategy (see below; default: ar)")
    p.add_argument("--draft", default=None, help="draft model name or directory (for speculative, tree, spectr)")
    p.add_argument("--heads", default=None,
                   help="prediction heads: a directory from `paragen train heads` or a built-in heads name "
                        "(for blockwise, medusa, hydra, eagle; default: the built-in heads of a built-in model)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate at most (default: 128; with --suffix-file the hole's size, default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample from the k most likely tokens only (no effect when greedy: a note says so)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling mass in (0, 1] (no effect when greedy: a note says so)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed for sampling (reproducible runs; no effect when greedy: a note says so)")
    p.add_argument("--stop", action="append", default=None, help="stop before this string (repeatable)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="strategy option (repeatable)")
    add_threads_flag(p, DEFAULT_THREADS)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--stream", action="store_true",
                     help="print text as it is committed, then a statistics line on stderr")
    out.add_argument("--json", action="store_true",
                     help="print one JSON object at the end: text, tokens (new only), stats (not with --stream)")
    p.add_argument("--stats", action="store_true", help="print a statistics line on stderr after the text")
    out.add_argument("--show", action="store_true",
                     help="print the text with each call's committed span coloured (accepted proposal vs the target's "
                     "own token; NO_COLOR: bracketed)")
    p.add_argument("--show-calls", action="store_true", help="with --show: one line per call (proposed, accepted, time)")
    p.add_argument("--show-html", default=None, metavar="FILE.html",
                   help="write the trace as a self-contained page to step through (see `paragen trace`)")
    p.add_argument("--trace-json", default=None, metavar="FILE.json", help="write the trace (docs/trace.md) as JSON")
    p.add_argument("--suffix-file", default=None, metavar="FILE",
                   help="infill: the text after the hole (UTF-8); PROMPT is the text before it (may be ''). Prints the "
                   "hole's text. Needs a full-attention diffusion model (e.g. --model code-diffusion --strategy "
                   "diffusion); --max-new-tokens is the hole's size (default 64), the model ends it earlier")
    p.set_defaults(run=run_generate)


def read_stdin() -> str:
    """Standard input as UTF-8 text; one clear error for other bytes."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream without bytes underneath (e.g. io.StringIO)
        return sys.stdin.read()
    data = raw.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        from paragen.errors import InvalidInputError

        raise InvalidInputError(f"standard input is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}): "
                                "convert it first, e.g. iconv -f LATIN1 -t UTF-8") from None


def stats_line(gen: Any) -> str:
    """One line of statistics for stderr: the counts, the drafts (accepted / proposed draft
    positions, as /metrics counts them; drafted tokens verified per target call, as the
    bench's drafted/call) and whether the output is lossy (``paragen.labels``)."""
    from paragen.labels import draft_totals, label

    s = gen.stats
    parts = [f"{s.new_tokens} tokens", f"{s.target_calls} target calls"]
    if s.draft_calls:
        parts.append(f"{s.draft_calls} draft calls")
    parts.append(f"{s.tokens_per_call:.2f} tokens/call")
    drafts = draft_totals(s.extra)
    if drafts is not None:
        proposed, accepted, nodes = drafts
        rate = f" ({accepted / proposed:.0%})" if proposed else ""
        per_call = nodes / s.target_calls if s.target_calls else 0.0
        parts.append(f"drafts {accepted}/{proposed} accepted{rate}, {per_call:.2f} drafted/call")
    parts += [f"{s.seconds:.2f} s", f"{s.tokens_per_second:.1f} tok/s", f"finish: {s.finish_reason}"]
    if label(s.extra):
        parts.append(label(s.extra))
    return f"[{s.strategy}: {', '.join(parts)}]" + "".join(f"\n{line}" for line in auto_lines(s.extra))


def auto_lines(extra: dict[str, Any]) -> list[str]:
    """``auto``'s segments, one line per switch: which strategy ran, for how long, what it gave."""
    info = extra.get("auto")
    if not info:
        return []
    lines = [f"  auto: {s['strategy']:<11} {s['steps']:>4} steps {s['tokens']:>5} tokens "
             f"{s['tokens_per_call']:.2f} tokens/call {s['seconds']:.3f} s" for s in info["segments"]]
    costs = info["costs"]
    lines.append(f"  auto: candidates {', '.join(info['candidates'])}; call costs at batch {costs['batch']} "
                 f"measured in {costs['measured_seconds']:.2f} s (target 1 token {costs['target'][1] * 1e3:.2f} ms, "
                 f"{max(costs['target'])} tokens {costs['target'][max(costs['target'])] * 1e3:.2f} ms)")
    return lines


def generate_prompt(args: argparse.Namespace) -> str | list[int]:
    """The prompt: text (the argument, or standard input for -) or ``--prompt-ids``' token ids."""
    from paragen.errors import InvalidInputError

    if (args.prompt is None) == (args.prompt_ids is None):
        raise InvalidInputError("give the prompt as text (PROMPT, or - for standard input) or as token ids "
                                "(--prompt-ids 1,2,3), one of the two")
    if args.prompt_ids is None:
        return read_stdin() if args.prompt == "-" else args.prompt
    try:
        return [int(t) for t in args.prompt_ids.split(",")]
    except ValueError:
        raise InvalidInputError(f"--prompt-ids takes comma-separated token ids (integers), got '{args.prompt_ids}'") \
            from None


def run_generate(args: argparse.Namespace) -> int:
    import paragen
    from paragen.models import NoTokenizerWarning
    from paragen.strategies import get_strategy

    prompt = generate_prompt(args)
    options = parse_options(args.option)
    if args.suffix_file is not None:
        return run_infill(args, prompt, options)
    if args.max_new_tokens is None:
        args.max_new_tokens = 128
    cls = get_strategy(args.strategy)
    check_generate_flags(cls, args, prompt)
    # Greedy: top-k/top-p change nothing, and neither does the seed for a lossless strategy
    # (its output is argmax decoding's); a lossy one may draw noise (diffusion's random ordering).
    ignored = [flag for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p),
                                        ("--seed", args.seed if cls.lossless else None)) if value is not None]
    if args.temperature == 0 and ignored:
        print(f"paragen: note: {', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect with "
              "--temperature 0 (greedy decoding is deterministic)", file=sys.stderr)
    pieces: list[str] = []
    with command_threads(args):
        with warnings.catch_warnings():  # handled here: token ids in (--prompt-ids), token ids out
            warnings.simplefilter("ignore", NoTokenizerWarning)
            model = paragen.load(args.model, **load_kwargs(args))
            draft = paragen.load(args.draft, **load_kwargs(args)) if args.draft else None
        heads = paragen.load_heads(args.heads, model) if args.heads else None
        check_heads_found(cls, model, heads)
        it = paragen.stream(model, prompt, strategy=args.strategy, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                            stop=args.stop, draft=draft, heads=heads, **options,
                            trace=bool(args.show or args.show_calls or args.show_html or args.trace_json))
        try:
            for piece in it:
                pieces.append(piece)
                if args.stream:
                    print(piece, end="", flush=True)
        except KeyboardInterrupt:
            # what was committed is the user's: print it (streamed already, or not yet), then main's one line
            print("" if args.stream else "".join(pieces), flush=True)
            raise
    gen = it.generation
    if gen.trace is not None:
        from paragen import trace_html, trace_view

        if args.trace_json:
            gen.trace.save(args.trace_json)
        if args.show_html:
            trace_html.write(gen.trace, args.show_html)
    if args.show or args.show_calls:
        trace_view.show(gen.trace, sys.stdout, calls=args.show_calls)
    elif args.json:
        print(json.dumps(gen.to_dict()))
    elif model.tokenizer is None:  # no text to show: the new token ids, as --prompt-ids takes them
        print(",".join(map(str, gen.tokens)))
    else:
        print("" if args.stream else gen.text)
    if args.stream or args.stats:
        print(stats_line(gen), file=sys.stderr)
    return 0


def run_infill(args: argparse.Namespace, prefix: str | list[int], options: dict[str, str]) -> int:
    """``generate --suffix-file``: fill the hole between the prompt and the file's text."""
    import pathlib

    import paragen
    from paragen.errors import InvalidInputError

    if args.stream or args.show or args.show_calls or args.show_html or args.trace_json or args.stop or args.draft:
        raise InvalidInputError("--suffix-file prints the filled hole once it is decoded: drop --stream, --show*, "
                                "--trace-json, --stop and --draft")
    try:
        suffix = pathlib.Path(args.suffix_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"--suffix-file {args.suffix_file}: cannot read it as UTF-8 text ({e})") from None
    if isinstance(prefix, list):
        raise InvalidInputError("--suffix-file is text: give the prefix as text too (PROMPT, or - for standard input)")
    with command_threads(args):
        model = paragen.load(args.model, **load_kwargs(args))
        gen = paragen.infill(model, prefix, suffix, max_new_tokens=args.max_new_tokens,
                             # --strategy's default (ar) cannot fill a hole: it stands for infill's own default
                             strategy=args.strategy if args.strategy != "ar" else "diffusion",
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                             **options)
    print(json.dumps(gen.to_dict()) if args.json else gen.text)
    if args.stats:
        print(stats_line(gen), file=sys.stderr)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from paragen.heads.io import builtin_heads
    from paragen.models.io import builtin_models, read_config

    found = builtin_models()
    if not found:
        print("no built-in models are installed (train them with `paragen train lm`)")
    for name, path in found.items():
        cfg = read_config(path)
        info = json.loads((path / "training.json").read_text()) if (path / "training.json").exists() else {}
        params = info.get("parameters")
        extra = f"{params / 1e6:.1f}M params" if params else ""
        if "heldout_loss" in info:
            extra += f", held-out loss {info['heldout_loss']:.2f}, accuracy {info['heldout_accuracy']:.3f}"
        print(f"{name:<22} {cfg.get('paragen_attention', 'causal'):<14} {extra}  {path}")
    for name, path in builtin_heads().items():
        info = json.loads((path / "training.json").read_text()) if (path / "training.json").exists() else {}
        accs = "/".join(f"{a:.2f}" for a in info.get("per_head_accuracy", []))
        extra = f"{info['parameters'] / 1e6:.1f}M params, top-1 agreement per head {accs}" if "parameters" in info else ""
        print(f"{name:<22} {'heads':<14} {extra}  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser; each registers the function that runs it (``set_defaults(run=...)``)."""
    from paragen import __version__
    from paragen.batch import add_batch_parser
    from paragen.bench.cli import add_bench_parser
    from paragen.serve.cli import add_serve_parser
    from paragen.speech.cli import add_data_parser, add_transcribe_parser
    from paragen.trace_view import add_trace_parser
    from paragen.train.cli import add_train_parser

    p = argparse.ArgumentParser(prog="paragen", description="Fast parallel decoding of generative sequence models.")
    p.add_argument("--version", action="version", version=f"paragen {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate_parser(sub)
    sub.add_parser("models", help="list the built-in models",
                   description="List the built-in models and their training results.").set_defaults(run=run_models)
    add_train_parser(sub)
    add_bench_parser(sub)
    add_serve_parser(sub)
    add_batch_parser(sub)
    add_trace_parser(sub)
    add_data_parser(sub)
    add_transcribe_parser(sub)
    return p


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then raise it as KeyboardInterrupt.

    An interrupt that lands inside an extension module's initialisation (torch's, while
    ``build_parser`` imports it) can abort the interpreter from C++ instead of raising
    KeyboardInterrupt; held for the second or two of imports, it ends the command cleanly.
    The previous handler is restored on the way out; off the main thread (where signals
    cannot be handled) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def run(argv: list[str] | None) -> int:
    with interrupts_held():
        parser = build_parser()  # imports torch, numpy, tokenizers
    args = parser.parse_args(argv)
    return args.run(args)  # every subcommand registers its own: set_defaults(run=...)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, a warning prints as one line, ``paragen: warning: MESSAGE``: a command's
    user did not write the code a warning would otherwise point at. Restored on the way out."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"paragen: warning: {message}", file=sys.stderr)
        yield


def main(argv: list[str] | None = None) -> int:
    """The ``paragen`` command: 0 on success, 2 with one line on bad input, 130 on Ctrl-C;
    warnings one line each.

    Everything heavy (torch, transformers) is imported inside, so an interrupt while
    starting up is caught here too.
    """
    try:
        with one_line_warnings():
            return run(argv)
    except (ParagenError, FileNotFoundError) as e:
        print(f"paragen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("paragen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
