"""The ``paragen`` command line: generate, models, train, bench."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from paragen.errors import ParagenError


def strategy_help() -> str:
    from paragen.strategies import STRATEGIES

    lines = []
    for name, cls in STRATEGIES.items():
        opts = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls.Options)) or "no options"
        lines.append(f"  {name:<12} {cls.summary} [{opts}]")
    return "strategies and their options (-o KEY=VALUE):\n" + "\n".join(lines)


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    from paragen.models import DTYPES

    p = sub.add_parser(
        "generate", help="continue a prompt with a decoding strategy",
        description="Continue PROMPT with a model and a decoding strategy; print the text (or JSON with stats).",
        epilog=strategy_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="prompt text, or - to read it from standard input")
    p.add_argument("--model", default="code-target",
                   help="built-in model name or Hugging Face model directory (default: code-target)")
    p.add_argument("--backend", choices=["native", "hf"], default="native",
                   help="native (paragen's own, fast) or hf (transformers)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="weights' dtype (bfloat16 is faster on CPUs with bf16 support, with other rounding)")
    p.add_argument("--strategy", default="ar", help="decoding strategy (see below; default: ar)")
    p.add_argument("--draft", default=None, help="draft model name or directory (for speculative)")
    p.add_argument("--heads", default=None,
                   help="prediction heads directory (for blockwise, medusa, hydra, eagle; `paragen train heads`)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default: 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling (reproducible runs)")
    p.add_argument("--stop", action="append", default=None, help="stop before this string (repeatable)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="strategy option (repeatable)")
    p.add_argument("--stream", action="store_true", help="print text as it is committed")
    p.add_argument("--json", action="store_true", help="print one JSON object: text, tokens (new only), stats")


def run_generate(args: argparse.Namespace) -> int:
    import paragen
    from paragen.errors import InvalidInputError
    from paragen.models import DTYPES

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidInputError(f"strategy option '{item}' must look like KEY=VALUE")
        options[key.replace("-", "_")] = value
    dtype = DTYPES[args.dtype]
    model = paragen.load(args.model, backend=args.backend, dtype=dtype)
    draft = paragen.load(args.draft, backend=args.backend, dtype=dtype) if args.draft else None
    heads = paragen.load_heads(args.heads, model) if args.heads else None
    kwargs = dict(
        strategy=args.strategy, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop, draft=draft, heads=heads, **options,
    )
    if args.stream and not args.json:
        it = paragen.stream(model, prompt, **kwargs)
        while True:
            try:
                print(next(it), end="", flush=True)
            except StopIteration as done:
                gen = done.value
                break
        print()
        s = gen.stats
        print(f"[{s.strategy}: {s.new_tokens} tokens, {s.target_calls} target calls, "
              f"{s.tokens_per_call:.2f} tokens/call, {s.tokens_per_second:.1f} tok/s]", file=sys.stderr)
        return 0
    gen = paragen.generate(model, prompt, **kwargs)
    if args.json:
        print(json.dumps(gen.to_dict()))
    else:
        print(gen.text)
    return 0


def run_models(args: argparse.Namespace) -> int:
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    from paragen.bench.cli import add_bench_parser
    from paragen.train.cli import add_train_parser

    p = argparse.ArgumentParser(prog="paragen", description="Fast parallel decoding of generative sequence models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate_parser(sub)
    sub.add_parser("models", help="list the built-in models", description="List the built-in models and their training results.")
    add_train_parser(sub)
    add_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return run_generate(args)
        if args.command == "models":
            return run_models(args)
        if args.command == "train":
            from paragen.train.cli import run_train

            return run_train(args)
        if args.command == "bench":
            from paragen.bench.cli import run_bench

            return run_bench(args)
    except (ParagenError, FileNotFoundError) as e:
        print(f"paragen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("paragen: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
