"""``paragen bench``: measure strategies and transformers peers against ``ar`` on a task set.

Writes ``OUT/bench.json``, ``OUT/bench.md`` and ``OUT/report.html`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from paragen.bench.run import BenchConfig, parse_model_for, parse_option
from paragen.flags import COMPILE_FLAGS, add_model_flags, add_threads_flag, options_help, strategy_help
from paragen.tasks import TASK_CHOICES, TASKS

DEFAULTS = BenchConfig()
# Everything that runs on a causal target (and a draft) today; "all" also picks up new strategies.
DEFAULT_STRATEGIES = "ar,speculative,lookup,jacobi,lookahead,hf-greedy,hf-assisted,hf-lookup"


def _epilog() -> str:
    from paragen.bench.peers import PEERS

    peers = []
    for name, cls in PEERS.items():
        peers.append(f"  {name:<16}{cls.summary}")
        peers += options_help(cls)
    return (strategy_help().replace("(-o KEY=VALUE;", "(--option STRATEGY:KEY=VALUE;")
            + "\ntransformers peers (same weights):\n" + "\n".join(peers)
            + f"\n\ntasks: {TASK_CHOICES}. ar always runs: it is the reference.")


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``paragen bench`` and its flags."""
    p = sub.add_parser(
        "bench", help="benchmark strategies against ar (speedup, tokens per call, quality)",
        description="Run every strategy and ar on each prompt of a task set, interleaved, after a warm-up; "
        "write OUT/bench.json, OUT/bench.md and OUT/report.html and print a table.",
        epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help=f"comma-separated strategies and peers, or all (default: {DEFAULT_STRATEGIES})")
    p.add_argument("--task", default=DEFAULTS.task,
                   help=f"task set: {', '.join(TASKS)}, or file:PATH for your own prompts (JSON Lines with a "
                   f"\"prompt\" field per line if PATH ends in .jsonl, else one prompt per line; speech[:DIR] for the "
                   f"speech decoders on the held-out sets of a `paragen data speech` DIR; infill[:humaneval|:stdlib] for holes "
                   f"filled by --model-for diffusion=MODEL (default code-diffusion) against ar given the prefix only, "
                   f"contenders ar,diffusion[KEY=VALUE;...] in --strategies; default: {DEFAULTS.task})")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens,
                   help=f"tokens per prompt at most (default: {DEFAULTS.max_new_tokens})")
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p, help="nucleus sampling mass in (0, 1] (with --temperature > 0)")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="sampling and bootstrap seed (default: 0)")
    p.add_argument("--model", default=DEFAULTS.model,
                   help=f"target model name or directory (default: {DEFAULTS.model})")
    p.add_argument("--draft", default=DEFAULTS.draft,
                   help=f"draft model for draft strategies and hf-assisted (default: {DEFAULTS.draft})")
    add_model_flags(p, dtype_note=" for every contender (peers use transformers and run a weight format in float32; "
                    "gen_ppl is scored in float32; with --compile, every call size the contenders use is compiled before timing)")
    p.add_argument("--option", action="append", default=[], metavar="STRATEGY:KEY=VALUE",
                   help="strategy option, e.g. lookup:max_draft=8 (repeatable)")
    p.add_argument("--model-for", action="append", default=[], metavar="STRATEGY=MODEL",
                   help="run STRATEGY on its own target, e.g. diffusion=code-diffusion (repeatable); "
                   "ar, the peers and gen_ppl stay on --model")
    p.add_argument("--heads", action="append", default=[], metavar="STRATEGY=DIR",
                   help="prediction heads for a heads strategy, e.g. medusa=runs/heads-medusa (repeatable)")
    add_threads_flag(p, DEFAULTS.threads)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                   help="prompts each contender decodes together (above 1: ar, speculative, lookup; default: 1)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trace", default=None, metavar="STRATEGY",
                   help="after the timed runs, trace STRATEGY on every prompt: OUT/traces/*.html, linked from the report")
    p.set_defaults(run=run_bench)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig the flags describe (options parsed, nothing loaded)."""
    return BenchConfig(
        strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
        task=args.task, limit=args.limit, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, model=args.model, draft=args.draft, backend=args.backend, dtype=args.dtype,
        options=tuple(parse_option(o) for o in args.option),
        models=tuple(parse_model_for(m) for m in args.model_for), threads=args.threads,
        compile=COMPILE_FLAGS[args.compile],
        heads=tuple(parse_model_for(h, "--heads") for h in args.heads), device=args.device,
        batch_size=args.batch_size,
    )


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, write bench.json, bench.md and report.html atomically, print the table."""
    from pathlib import Path

    from paragen.bench.report import bench_json, bench_markdown, html_report, markdown_table, write_atomic
    from paragen.bench.run import run

    if args.task == "speech" or args.task.startswith("speech:"):
        from paragen.speech.cli import run_speech_bench_args

        return run_speech_bench_args(args, DEFAULT_STRATEGIES, DEFAULTS.model)
    if args.task == "infill" or args.task.startswith("infill:"):
        from paragen.bench.infill import DEFAULT_CONTENDERS, run_infill_bench

        models = dict(parse_model_for(m) for m in args.model_for)
        contenders = DEFAULT_CONTENDERS if args.strategies == DEFAULT_STRATEGIES else args.strategies
        return run_infill_bench(args.task, contenders, args.model, models.get("diffusion", "code-diffusion"),
                                args.limit, args.out, args.threads, progress=not args.no_progress)
    config = config_from_args(args)
    if args.trace and args.trace not in ("ar", *config.strategies):  # before the timed runs, not after
        from paragen.errors import InvalidInputError

        raise InvalidInputError(f"--trace {args.trace}: not among --strategies ({args.strategies})")
    result = run(config, progress=not args.no_progress, argv=["paragen", *sys.argv[1:]])
    out = Path(args.out)
    bench = result.to_dict()
    if args.trace:
        from paragen.bench.traces import write_traces

        pages = write_traces(result, args.trace, out)
        for task in bench["tasks"]:
            task["trace"] = pages.get(task["id"])
    write_atomic(out / "bench.json", bench_json(bench))
    write_atomic(out / "bench.md", bench_markdown(bench, result.summary))
    write_atomic(out / "report.html", html_report(bench, result.summary))
    print(markdown_table(result.summary))
    print(f"wrote {out / 'bench.json'}, bench.md and report.html in {result.seconds:.0f} s on "
          f"{bench['environment']['torch_threads']} thread(s)  ({shlex.join(bench['environment']['command'])})",
          file=sys.stderr)
    return 0
