"""What a call costs on the llamacpp backend, and where it goes (run it on a quiet machine).

For code-target (and code-draft) converted to f32 and f16 GGUF, on ``--threads`` threads:

- ``ar`` tokens/s of paragen on the backend against llama.cpp's own generate (llama-cpp-python's
  ``Llama.generate``, greedy) on the same GGUF file and prompts, prefill included in both;
- the backend's per-call time by tokens fed (a causal chain, and a token tree of as many nodes,
  four children per node) on a cache of about 200 committed tokens, split into llama_decode
  and the rest (the Python side: mask to tree, sequence ids, batch, logits copy);
- the draft's one-token call against the target's (what a drafted token costs).

    PYTHONPATH=src python scripts/llamacpp_cost.py [--threads 2] [--tokens 128] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time

import torch

import paragen
from paragen.bench.peers import run_llamacpp
from paragen.models.llamacpp import LlamaCppModel, load_llamacpp
from paragen.threads import torch_threads

PROMPTS = ["def fibonacci(n):\n    ", "import os\n\n\nclass Config:\n    def __init__(self",
           "    for i in range(10):\n", 'def parse(text):\n    """Split text into words."""\n']
SIZES = (1, 2, 4, 8, 16, 32, 64)


class Timed(LlamaCppModel):
    """The backend with llama_decode's own time accumulated (the rest of a call is Python)."""

    decode_seconds = 0.0

    def _decode(self) -> None:
        start = time.perf_counter()
        super()._decode()
        self.decode_seconds += time.perf_counter() - start


def timed(model: LlamaCppModel) -> Timed:
    model.__class__ = Timed  # the loaded model, its _decode timed: a script's measuring hook, not library code
    return model  # type: ignore[return-value]


def tokens_per_second(run, prompts: list[list[int]], tokens: int) -> float:
    run(prompts[0], 8)  # warm-up
    n, seconds = 0, 0.0
    for p in prompts:
        start = time.perf_counter()
        n += len(run(p, tokens))
        seconds += time.perf_counter() - start
    return n / seconds


def tree_mask(n: int) -> tuple[torch.Tensor, list[int]]:
    """A tree of n nodes, four children per node, breadth first: ancestor mask [n, n], depths."""
    parent = [-1] + [(i - 1) // 4 for i in range(1, n)]
    mask, depth = torch.zeros(n, n, dtype=torch.bool), []
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parent[j]
        depth.append(int(mask[i].sum()) - 1)
    return mask, depth


def call_cost(model: Timed, prefix: list[int], n: int, tree: bool, repeat: int) -> tuple[float, float]:
    """(ms per call, of which llama_decode ms) for n tokens after ``prefix``, rejected after each call."""
    cache = model.new_cache()
    model(torch.tensor([prefix]), torch.arange(len(prefix))[None], cache=cache)
    cache.commit(len(prefix))
    L = len(prefix)
    mask, depth = tree_mask(n) if tree else (None, list(range(n)))
    tokens, positions = torch.tensor([prefix[:n] + [1] * (n - len(prefix[:n]))]), torch.tensor([[L + d for d in depth]])
    total = decode = 0.0
    for r in range(repeat + 2):
        before = model.decode_seconds
        start = time.perf_counter()
        model(tokens, positions, cache=cache, mask=mask)
        if r >= 2:  # two warm-ups
            total += time.perf_counter() - start
            decode += model.decode_seconds - before
        cache.truncate(L)  # rejected: the next call prunes the cells
    return 1e3 * total / repeat, 1e3 * decode / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    import llama_cpp

    with torch_threads(args.threads):
        for dtype, gguf in (("float32", "f32"), ("fp16-weights", "f16")):
            target = timed(load_llamacpp("code-target", dtype=dtype, threads=args.threads))
            draft = timed(load_llamacpp("code-draft", dtype=dtype, threads=args.threads))
            tok = target.tokenizer
            prompts = [tok.encode(p) for p in PROMPTS]
            llm = llama_cpp.Llama(model_path=str(target.path), n_ctx=target.info.max_length, n_threads=args.threads,
                                  n_threads_batch=args.threads, n_batch=target.info.max_length,
                                  type_k=0 if gguf == "f32" else None, type_v=0 if gguf == "f32" else None, verbose=False)
            eos = target.info.eos_ids
            ours = tokens_per_second(lambda p, k, m=target: paragen.generate(m, p, "ar", max_new_tokens=k).tokens,
                                     prompts, args.tokens)
            theirs = tokens_per_second(lambda p, k, m=llm, e=eos: run_llamacpp(m, p, k, e).tokens, prompts, args.tokens)
            print(f"\n## {gguf} GGUF, {args.threads} threads\n")
            print(f"ar on the backend: {ours:.1f} tok/s; llama.cpp's own generate: {theirs:.1f} tok/s "
                  f"(backend / llama.cpp = {ours / theirs:.3f})\n")
            prefix = (prompts[1] * 40)[:200]
            print("| tokens fed | chain ms | of which llama_decode | tree ms | of which llama_decode |")
            print("|---|---|---|---|---|")
            for n in SIZES:
                chain, chain_dec = call_cost(target, prefix, n, False, args.repeat)
                tree, tree_dec = call_cost(target, prefix, n, True, args.repeat)
                print(f"| {n} | {chain:.2f} | {chain_dec:.2f} | {tree:.2f} | {tree_dec:.2f} |")
            d, _ = call_cost(draft, prefix, 1, False, args.repeat)
            t, _ = call_cost(target, prefix, 1, False, args.repeat)
            print(f"\ndraft one-token call {d:.2f} ms, target {t:.2f} ms: a drafted token costs {d / t:.2f} target calls")


if __name__ == "__main__":
    main()
