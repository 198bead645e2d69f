"""The GPU table: every lossless strategy against ``ar`` and transformers' ``generate()`` on the
built-in models, per dtype, batch size and step (eager, compiled: CUDA graphs on CUDA).

One ``paragen bench`` run per (dtype, batch, step) into OUT/<config>/, then one markdown table
OUT/gpu_table.md with tokens/s, speedup against that run's ``ar`` and tokens per call, and
the device's name. A run that fails is a row saying so (the others still run); a run that
would pass the time budget is skipped and said so.

    python scripts/gpu_table.py --device cuda --out OUT [--limit 8] [--max-new-tokens 64] [--budget 300]
    python scripts/gpu_table.py --device cpu --out OUT --limit 2 --max-new-tokens 16   # the same, end to end here
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STRATEGIES = "ar,speculative,lookup,tree,eagle,auto,hf-greedy"
BATCHED = "ar,speculative,lookup,tree,eagle,auto"  # transformers' peers decode one prompt at a time


def configs(device: str) -> list[tuple[str, int, bool]]:
    """(dtype, batch, compiled): bf16 and fp32, batch 1 and 16, eager and compiled."""
    dtypes = ["bfloat16", "float32"] if device.startswith("cuda") else ["float32"]
    return [(d, b, c) for d in dtypes for b in (1, 16) for c in (False, True)]


def run(args: argparse.Namespace, dtype: str, batch: int, compiled: bool) -> tuple[Path, str | None]:
    name = f"{dtype}-b{batch}-{'compiled' if compiled else 'eager'}"
    out = args.out / name
    cmd = [sys.executable, "-m", "paragen", "bench", "--task", "humaneval", "--limit", str(max(args.limit, batch)),
           "--max-new-tokens", str(args.max_new_tokens), "--strategies", STRATEGIES if batch == 1 else BATCHED,
           "--dtype", dtype, "--device", args.device, "--batch-size", str(batch), "--out", str(out), "--no-progress"]
    if compiled:
        cmd.append("--compile")
    done = subprocess.run(cmd, capture_output=True, text=True)
    (args.out / f"{name}.log").write_text(done.stdout + done.stderr)
    return out, None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=8, help="HumanEval prompts per run (at least the batch size)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--budget", type=float, default=300.0, help="seconds for all runs; later runs are skipped")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0, rows, device_name = time.monotonic(), [], args.device
    for dtype, batch, compiled in configs(args.device):
        step = "compiled" if compiled else "eager"
        if time.monotonic() - t0 > args.budget:
            rows.append(f"| {dtype} | {batch} | {step} | skipped: past the {args.budget:.0f} s budget | | | |")
            continue
        out, error = run(args, dtype, batch, compiled)
        if error:
            rows.append(f"| {dtype} | {batch} | {step} | failed: {error[:120]} | | | |")
            continue
        bench = json.loads((out / "bench.json").read_text())
        env = bench["environment"]
        device_name = env.get("gpu") or env.get("cpu") or device_name
        for name, s in bench["summary"].items():
            tpc = f"{s['tokens_per_call']:.2f}" if s.get("tokens_per_call") else "-"
            rows.append(f"| {dtype} | {batch} | {step} | {name} | {s['tok_s']:.1f} | {s['speedup']:.2f} | {tpc} |")
    table = [f"# GPU table: {device_name}", "",
             f"HumanEval, {args.max_new_tokens} new tokens, greedy; speedup against `ar` of the same run.", "",
             "| dtype | batch | step | strategy | tok/s | speedup | tokens/call |", "|---|---|---|---|---|---|---|", *rows]
    (args.out / "gpu_table.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
