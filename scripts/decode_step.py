"""The CPU decode step of code-target, variant by variant, in one table (run it on a quiet machine).

For each variant (the plain module-by-module path, the packed path, each weight format, the
compiled step) and each thread count: ``ar`` tokens/s over the prompts (greedy, prefill
included, as for the llama.cpp peers), the time of one decode token split into weight
matmuls and the rest (matmul kernels' self time from torch.profiler; the rest is the wall
time minus it), torch ops per token called from Python (deterministic; nested ops not
counted), the time of one verification-sized call, and how many outputs equal the plain
float32 path's token for token. llama.cpp f32 / f16 / q8_0 on the same weights and prompts
are added where llama-cpp-python is installed. About 2-4 minutes on 2 cores (compilation
included: the compiled variant's first calls are untimed warm-up).

    PYTHONPATH=src python scripts/decode_step.py [--threads 1,2] [--tokens 128] [--no-compile]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import paragen
from paragen.bench.peers import LlamaCpp, LlamaCppF16, LlamaCppQ8, load_llamacpp, run_llamacpp
from paragen.threads import torch_threads

PROMPTS = [
    "def fibonacci(n):\n    ",
    "import os\n\n\nclass Config:\n    def __init__(self",
    "    for i in range(10):\n",
    'def parse(text):\n    """Split text into words."""\n',
]
VERIFY = 5  # tokens of the wider call timed per variant (speculative's default chain of 4, plus one)
# Kernels that multiply by a weight matrix (torch eager, fbgemm fp16, int8 weight-only).
MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "quantized::linear_dynamic_fp16", "aten::_weight_int8pack_mm",
           "mkldnn::_linear_pointwise"}


def variants(compile: bool) -> list[tuple[str, str, bool, bool]]:
    """(label, dtype name, packed, compiled)."""
    out = [("fp32 plain (before)", "float32", False, False), ("fp32 packed", "float32", True, False),
           ("fp16-weights", "fp16-weights", True, False), ("int8-weights (lossy)", "int8-weights", True, False),
           ("bf16 (activations too)", "bfloat16", True, False)]
    if compile:
        out += [("fp32 packed compiled", "float32", True, True)]  # weight formats do not compile (graph breaks)
    return out


def ar_run(model, ids: list[list[int]], tokens: int) -> tuple[float, list[list[int]]]:
    """tokens/s of ar over the prompts (after one untimed warm-up), and the outputs."""
    paragen.generate(model, ids[0], max_new_tokens=8)
    outs, seconds, n = [], 0.0, 0
    for p in ids:
        start = time.perf_counter()
        g = paragen.generate(model, p, max_new_tokens=tokens)
        seconds += time.perf_counter() - start
        n += len(g.tokens)
        outs.append(g.tokens)
    return n / seconds, outs


def step_profile(model, ids: list[int], steps: int = 32, width: int = 1) -> tuple[float, float, float]:
    """(wall ms per cached call of ``width`` tokens, matmul ms per call, torch ops per call) over ``steps`` calls.
    Width 1 is a decode step; a wider call is what a draft-and-verify strategy's verification costs."""
    cache = model.new_cache(max_length=len(ids) + 3 * steps * width + 2)
    with torch.inference_mode():
        model(torch.tensor([ids]), torch.arange(len(ids))[None], cache=cache)
        cache.commit(len(ids))

        def step() -> None:
            n = cache.length
            model(torch.tensor([ids[-width:]]), torch.arange(n, n + width)[None], cache=cache)
            cache.commit(width)

        for _ in range(steps // 2):
            step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    events = prof.events()
    matmul = sum(e.self_cpu_time_total for e in events if e.name in MATMULS) / 1e3 / steps  # us -> ms
    ops = sum(1 for e in events if "::" in e.name and e.cpu_parent is None) / steps  # dispatched from Python
    return wall * 1e3, matmul, ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default: 1,2)")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per prompt (default: 128)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled variants")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    start = time.perf_counter()
    base = paragen.load("code-target")
    ids = [base.tokenizer.encode(p) for p in PROMPTS]
    rows, reference = [], {}
    for label, dtype, packed, compiled in variants(not args.no_compile):
        model = paragen.load("code-target", dtype=dtype, compile=compiled)
        if not packed:
            model.unpack()
        for n in threads:
            with torch_threads(n):
                if compiled:  # compile every call size timed below before timing (untimed)
                    model.warm_up(VERIFY)
                    ar_run(model, ids[:1], 4)
                tok_s, outs = ar_run(model, ids, args.tokens)
                wall, mm, ops = step_profile(model, ids[0])
                wide = step_profile(model, ids[0], steps=16, width=VERIFY)[0]
            reference.setdefault(n, outs) if label.startswith("fp32 plain") else None
            equal = sum(a == b for a, b in zip(outs, reference.get(n, outs)))
            rows.append((label, n, tok_s, wall, mm, wall - mm, ops, wide, f"{equal}/{len(outs)}"))
            print(f"  {label} threads={n}: {tok_s:.0f} tok/s", flush=True)
    llama = [p for p in (LlamaCpp, LlamaCppF16, LlamaCppQ8) if p.available()]
    for peer in llama:
        for n in threads:
            llm = load_llamacpp(peer, base, n, base.info.max_length)
            run_llamacpp(llm, ids[0], 8, base.info.eos_ids)
            seconds, outs, count = 0.0, [], 0
            for p in ids:
                o = run_llamacpp(llm, p, args.tokens, base.info.eos_ids)
                seconds += o.seconds
                count += len(o.tokens)
                outs.append(list(o.tokens))
            equal = sum(a == b for a, b in zip(outs, reference[n]))
            rows.append((peer.name, n, count / seconds, 1e3 * seconds / count, None, None, None, None,
                         f"{equal}/{len(outs)}"))
            print(f"  {peer.name} threads={n}: {count / seconds:.0f} tok/s", flush=True)
            del llm
    if not llama:
        print("  (llama-cpp-python is not installed: no llama.cpp rows; pip install 'paragen[llamacpp]')")

    def cell(x, fmt):
        return "-" if x is None else format(x, fmt)

    plain = {n: r[2] for r in rows for n in threads if r[0].startswith("fp32 plain") and r[1] == n}
    print(f"\ncode-target, ar greedy, {len(PROMPTS)} prompts x {args.tokens} tokens; torch {torch.__version__}; "
          f"{time.perf_counter() - start:.0f} s in all")
    print(f"| variant | threads | tok/s | vs fp32 plain | ms/token | matmul ms | rest ms | ops/token | ms/call T={VERIFY} "
          "| = fp32 plain |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, n, tok_s, wall, mm, rest, ops, wide, equal in rows:
        print(f"| {label} | {n} | {tok_s:.0f} | {tok_s / plain[n]:.2f} | {wall:.2f} | {cell(mm, '.2f')} | "
              f"{cell(rest, '.2f')} | {cell(ops, '.0f')} | {cell(wide, '.2f')} | {equal} |")
    print("ms/token: one cached decode step (wall, no profiler); matmul ms: weight-matmul kernels' self time "
          f"(profiled); rest = ms/token - matmul ms; ms/call T={VERIFY}: one cached call of {VERIFY} tokens (a "
          "verification). llama.cpp rows: ms/token over the whole run, prefill included.")


if __name__ == "__main__":
    main()
