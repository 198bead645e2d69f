"""Load test of ``paragen serve``: requests, errors, latency and tokens/s at several concurrency levels.

Starts the server in this process on loopback (or targets ``--url``), then for each strategy
and each number of concurrent clients, has that many streaming clients send HumanEval
prompts back to back until ``--requests`` have been answered. Per level: requests, errors,
p50/p99 latency (arrival to [DONE]), p50 time to first text, and tokens/s (completion tokens
from ``usage`` over the level's wall time). Requests are decoded one at a time behind the
queue (no batched decoding yet), so tokens/s does not grow with clients; latency does.

    .venv/bin/python scripts/serve_load.py --threads 4 --out out/serve-load.json
    .venv/bin/python scripts/serve_load.py --levels 1,2 --requests 4 --max-tokens 16   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from contextlib import nullcontext
from pathlib import Path

import httpx


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def one_request(http: httpx.AsyncClient, url: str, payload: dict) -> dict:
    """One streamed completion: its latency, time to first text and completion tokens, or its error."""
    t0 = time.perf_counter()
    first, tokens, error, done = None, 0, None, False
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
                        if "error" in chunk:
                            error = chunk["error"]["message"]
                        elif chunk.get("usage"):
                            tokens = chunk["usage"]["completion_tokens"]
                        elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                            first = time.perf_counter() - t0
                if not done and error is None:
                    error = "stream ended without [DONE]"
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    return {"seconds": time.perf_counter() - t0, "first": first, "tokens": tokens, "error": error}


async def level(url: str, model: str, strategy: str, clients: int, prompts: list[str], args) -> dict:
    """``clients`` concurrent clients share ``len(prompts)`` requests; summary of the level."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results: list[dict] = []
    extra = {"paragen": {"strategy": strategy}}

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            payload = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}, **extra}
            results.append(await one_request(http, url, payload))

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.client_timeout, limits=httpx.Limits(max_connections=clients + 4)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["error"] is None]
    tokens = sum(r["tokens"] for r in ok)
    errors = [r["error"] for r in results if r["error"] is not None]
    return {
        "strategy": strategy, "clients": clients, "requests": len(results), "errors": len(errors),
        "first_errors": errors[:3], "p50_s": percentile([r["seconds"] for r in ok], 50),
        "p99_s": percentile([r["seconds"] for r in ok], 99),
        "p50_first_text_s": percentile([r["first"] for r in ok if r["first"] is not None], 50),
        "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall if wall > 0 else 0.0,
    }


def prompts_for(n: int, max_chars: int) -> list[str]:
    """``n`` HumanEval prompts of at most ``max_chars`` characters, cycled if there are fewer."""
    from paragen.tasks import humaneval

    pool = [t.prompt for t in humaneval() if len(t.prompt) <= max_chars]
    return [pool[i % len(pool)] for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="a running server (default: start one here on 127.0.0.1)")
    p.add_argument("--model", default="code-target")
    p.add_argument("--draft", default="code-draft", help="draft for the speculative runs")
    p.add_argument("--strategies", default="ar,speculative", help="comma-separated (default: ar,speculative)")
    p.add_argument("--levels", default="1,8,32", help="concurrent clients per level (default: 1,8,32)")
    p.add_argument("--requests", type=int, default=64, help="requests per level (default: 64)")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default: 64)")
    p.add_argument("--max-prompt-chars", type=int, default=1200, help="skip longer HumanEval prompts (default: 1200)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the in-process server")
    p.add_argument("--client-timeout", type=float, default=600.0)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args()

    levels = [int(c) for c in args.levels.split(",")]
    strategies = args.strategies.split(",")
    prompts = prompts_for(args.requests, args.max_prompt_chars)
    if args.url:
        context, name = nullcontext(args.url), args.model
    else:
        import torch

        import paragen
        from paragen.serve.app import ServeConfig, create_app, serve_in_thread

        if args.threads:
            torch.set_num_threads(args.threads)
        model = paragen.load(args.model)
        draft = paragen.load(args.draft) if "speculative" in strategies or "tree" in strategies else None
        # the queue holds every client's request: this measures latency under load, not refusals
        config = ServeConfig(max_queue=max(levels) + 1, max_tokens=args.max_tokens, timeout=3600)
        context, name = serve_in_thread(create_app(model, draft, config)), model.name

    rows = []
    with context as url:
        for strategy in strategies:
            asyncio.run(level(url, name, strategy, 1, prompts[:2], args))  # warm-up, not reported
            for clients in levels:
                row = asyncio.run(level(url, name, strategy, clients, prompts, args))
                rows.append(row)
                print(f"{strategy:<12} clients={clients:<3} requests={row['requests']:<4} errors={row['errors']:<3} "
                      f"p50={row['p50_s']:.2f}s p99={row['p99_s']:.2f}s first_text_p50={row['p50_first_text_s']:.2f}s "
                      f"tok/s={row['tok_s']:.1f}", flush=True)
                for e in row["first_errors"]:
                    print(f"    error: {e}")
        metrics = httpx.get(f"{url}/metrics").text
    print("\n| strategy | clients | requests | errors | p50 s | p99 s | first text p50 s | tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['p50_s']:.2f} | "
              f"{r['p99_s']:.2f} | {r['p50_first_text_s']:.2f} | {r['tok_s']:.1f} |")
    per_call = [line for line in metrics.splitlines() if line.startswith(("paragen_tokens_per_call", "paragen_acceptance"))]
    print("\n" + "\n".join(per_call))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "metrics": per_call}, indent=1))


if __name__ == "__main__":
    main()
