"""Load test of ``paragen serve``, the load generator in another process than the server.

Starts ``paragen serve`` as a subprocess on 127.0.0.1 (or targets ``--url``), then for each
strategy and each number of concurrent streaming clients has them send HumanEval prompts
back to back (greedy, ``--max-tokens``) until ``--requests`` have been answered. Per level:
requests, errors, tokens/s (completion tokens from ``usage`` over the level's wall time),
p50/p99 time to first text, inter-token latency (between a stream's pieces) and end-to-end
latency, and the engine's speculation decisions (steps that drafted / did not). Before the
levels, the same prompts through a direct ``paragen.generate`` in this process (the server
idle) give the 1-client reference.

    .venv/bin/python scripts/serve_load.py --threads 2 --out out/serve-load.json
    .venv/bin/python scripts/serve_load.py --levels 1,4 --requests 8 --max-tokens 16   # a quick check

Never run it beside training, tests or another benchmark: two cores stall badly when shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import httpx


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def one_request(http: httpx.AsyncClient, url: str, payload: dict) -> dict:
    """One streamed completion: latency, time to first text, gaps between pieces, tokens, or its error."""
    t0 = time.perf_counter()
    first, last, gaps, tokens, error, done = None, None, [], 0, None, False
    try:
        async with http.stream("POST", f"{url}/v1/completions", json=payload) as r:
            if r.status_code != 200:
                error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            else:
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        now = time.perf_counter()
                        if "error" in chunk:
                            error = chunk["error"]["message"]
                        elif chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                        elif chunk["choices"] and chunk["choices"][0]["text"]:
                            if first is None:
                                first = now - t0
                            else:
                                gaps.append(now - last)
                            last = now
                if not done and error is None:
                    error = "stream ended without [DONE]"
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    return {"seconds": time.perf_counter() - t0, "first": first, "gaps": gaps, "tokens": tokens, "error": error}


def steps(url: str) -> dict[tuple[str, str], float]:
    """The engine's step counters by (strategy, drafted) from /metrics (empty for a server without them)."""
    text = httpx.get(f"{url}/metrics").text
    found = re.findall(r'^paragen_steps_total\{drafted="(\w+)",strategy="(\w+)"\} (\S+)$', text, re.M)
    return {(s, d): float(v) for d, s, v in found}


async def level(url: str, model: str, strategy: str, clients: int, prompts: list[str], args) -> dict:
    """``clients`` concurrent clients share ``len(prompts)`` requests; summary of the level."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[dict] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            payload = {"model": model, "prompt": queue.get_nowait(), "max_tokens": args.max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}, "paragen": {"strategy": strategy}}
            results.append(await one_request(http, url, payload))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.client_timeout, limits=httpx.Limits(max_connections=clients + 4)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["error"] is None]
    tokens = sum(r["tokens"] for r in ok)
    gaps = [g for r in ok for g in r["gaps"]]
    firsts = [r["first"] for r in ok if r["first"] is not None]
    errors = [r["error"] for r in results if r["error"] is not None]
    return {
        "strategy": strategy, "clients": clients, "requests": len(results), "errors": len(errors),
        "first_errors": errors[:3], "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall if wall > 0 else 0.0,
        "ttft_p50_s": percentile(firsts, 50), "ttft_p99_s": percentile(firsts, 99),
        "itl_p50_s": percentile(gaps, 50), "itl_p99_s": percentile(gaps, 99),
        "e2e_p50_s": percentile([r["seconds"] for r in ok], 50), "e2e_p99_s": percentile([r["seconds"] for r in ok], 99),
    }


def prompts_for(n: int, max_chars: int) -> list[str]:
    """``n`` HumanEval prompts of at most ``max_chars`` characters, cycled if there are fewer."""
    from paragen.tasks import humaneval

    pool = [t.prompt for t in humaneval() if len(t.prompt) <= max_chars]
    return [pool[i % len(pool)] for i in range(n)]


def direct(args, strategy: str, prompts: list[str]) -> float:
    """tokens/s of ``paragen.generate`` on the prompts one at a time, in this process (after one warm-up)."""
    import torch

    import paragen

    torch.set_num_threads(args.threads)
    model = paragen.load(args.model)
    draft = paragen.load(args.draft) if strategy in ("speculative", "tree", "spectr") else None
    paragen.generate(model, prompts[0], strategy, max_new_tokens=args.max_tokens, draft=draft)
    t0, tokens = time.perf_counter(), 0
    for p in prompts:
        tokens += len(paragen.generate(model, p, strategy, max_new_tokens=args.max_tokens, draft=draft).tokens)
    return tokens / (time.perf_counter() - t0)


@contextmanager
def server(args):
    """``paragen serve`` in a subprocess, on a free port of 127.0.0.1; stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "paragen.cli", "serve", "--port", str(port), "--model", args.model, "--draft",
           args.draft, "--threads", str(args.threads), "--max-batch", str(args.max_batch),
           "--max-queue", str(max(args.requests, 64)), "--max-tokens", str(args.max_tokens), "--timeout", "3600",
           *args.server_args.split()]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {' '.join(cmd)}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start `paragen serve` as a subprocess)")
    p.add_argument("--model", default="code-target")
    p.add_argument("--draft", default="code-draft", help="draft for the speculative runs")
    p.add_argument("--strategies", default="ar,speculative,lookup", help="comma-separated (default: ar,speculative,lookup)")
    p.add_argument("--levels", default="1,4,16,32", help="concurrent clients per level (default: 1,4,16,32)")
    p.add_argument("--requests", type=int, default=64, help="requests per level (default: 64)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens per request (default: 128)")
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default: 16)")
    p.add_argument("--server-args", default="",
                   help="more flags for `paragen serve`, e.g. --server-args=--no-speculation-policy (with '=')")
    p.add_argument("--max-prompt-chars", type=int, default=1200, help="skip longer HumanEval prompts (default: 1200)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the server and the direct run (default: 2)")
    p.add_argument("--no-direct", action="store_true", help="skip the direct paragen.generate reference")
    p.add_argument("--client-timeout", type=float, default=1800.0)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()

    levels = [int(c) for c in args.levels.split(",")]
    strategies = args.strategies.split(",")
    prompts = prompts_for(args.requests, args.max_prompt_chars)
    refs = {} if args.no_direct else {s: direct(args, s, prompts[: min(16, len(prompts))]) for s in strategies}
    rows = []
    with (nullcontext(args.url) if args.url else server(args)) as url:
        for strategy in strategies:
            asyncio.run(level(url, args.model, strategy, 2, prompts[:2], args))  # warm-up, not reported
            for clients in levels:
                before = steps(url)
                row = asyncio.run(level(url, args.model, strategy, clients, prompts, args))
                after = steps(url)
                row["steps"] = {d: after.get((strategy, d), 0) - before.get((strategy, d), 0) for d in ("true", "false")}
                row["direct_tok_s"] = refs.get(strategy)
                rows.append(row)
                print(f"{strategy:<12} clients={clients:<3} errors={row['errors']} tok/s={row['tok_s']:.1f} "
                      f"ttft p50/p99={row['ttft_p50_s']:.2f}/{row['ttft_p99_s']:.2f}s "
                      f"itl p50/p99={row['itl_p50_s'] * 1e3:.0f}/{row['itl_p99_s'] * 1e3:.0f}ms "
                      f"e2e p50/p99={row['e2e_p50_s']:.2f}/{row['e2e_p99_s']:.2f}s "
                      f"drafted steps {row['steps']['true']:.0f}/{row['steps']['true'] + row['steps']['false']:.0f}",
                      flush=True)
                for e in row["first_errors"]:
                    print(f"    error: {e}")
    print("\n| strategy | clients | requests | errors | tok/s | direct tok/s | TTFT p50 / p99 s | ITL p50 / p99 ms "
          "| e2e p50 / p99 s | drafted steps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = r["steps"]["true"] + r["steps"]["false"]
        ref = f"{r['direct_tok_s']:.1f}" if r["direct_tok_s"] else "-"
        drafted = f"{r['steps']['true']:.0f} / {total:.0f}" if total else "-"
        print(f"| {r['strategy']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['tok_s']:.1f} | {ref} | "
              f"{r['ttft_p50_s']:.2f} / {r['ttft_p99_s']:.2f} | {r['itl_p50_s'] * 1e3:.0f} / {r['itl_p99_s'] * 1e3:.0f} | "
              f"{r['e2e_p50_s']:.2f} / {r['e2e_p99_s']:.2f} | {drafted} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
