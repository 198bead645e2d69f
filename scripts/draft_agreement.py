"""Held-out agreement of draft models with a target: KL(p_target || q_draft), argmax agreement,
and the draft's data loss and accuracy, on `train lm`'s fixed held-out windows of the standard
library (the same windows `train distill` reports), so drafts trained any way compare.

Usage: PYTHONPATH=src python scripts/draft_agreement.py code-draft runs/draft-wide-kl [--target code-target]
"""

from __future__ import annotations

import argparse
import json

import torch

from paragen.models.io import load_native, resolve
from paragen.train.distill import DistillConfig, distill_metrics, load_teacher
from paragen.train.lm import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("drafts", nargs="+", help="built-in names or model directories")
    ap.add_argument("--target", default="code-target")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--data", default=None, help="corpus directory (default: the standard library)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    target_dir, target = load_teacher(args.target)
    cfg = DistillConfig(tokenizer=str(target_dir), seq_len=args.seq_len, eval_windows=args.eval_windows, data=args.data)
    _, _, heldout, _ = prepare(cfg)
    for name in args.drafts:
        r = distill_metrics(load_native(resolve(name)), target, heldout, cfg)
        print(json.dumps({"draft": name, **{k: round(v, 4) for k, v in r.items()}}), flush=True)


if __name__ == "__main__":
    main()
