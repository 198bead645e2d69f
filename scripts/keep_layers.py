"""A shallower copy of a native model: the embedding, final norm and output head, and the
chosen decoder layers, in order. A start for distilling a cheaper draft (`paragen train
distill --init OUT`) from a trained one, as DistilBERT starts its student from every other
layer of its teacher (Sanh et al. 2019): on this CPU a draft call costs about one step of
op overhead per layer, so a layer fewer is what makes a draft cheaper.

Usage: PYTHONPATH=src python scripts/keep_layers.py code-draft runs/draft-2l-init --layers 0,2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from paragen.models.io import load_native, resolve, save_model
from paragen.models.native import NativeModel
from paragen.tokenizer import Tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="built-in name or model directory")
    ap.add_argument("out", help="model directory to write")
    ap.add_argument("--layers", required=True, help="comma-separated indices of the layers to keep, e.g. 0,2")
    args = ap.parse_args()
    src_dir = resolve(args.model)
    src = load_native(src_dir)
    keep = [int(i) for i in args.layers.split(",")]
    n = src.config.num_hidden_layers
    if not keep or sorted(set(keep)) != keep or not all(0 <= i < n for i in keep):
        raise SystemExit(f"--layers must be increasing indices in 0..{n - 1}, got {args.layers}")
    out = NativeModel(replace(src.config, num_hidden_layers=len(keep)))
    state, renamed = src.state_dict(), {}
    for name, tensor in state.items():
        if name.startswith("model.layers."):
            index, rest = name.removeprefix("model.layers.").split(".", 1)
            if int(index) not in keep:
                continue
            name = f"model.layers.{keep.index(int(index))}.{rest}"
        renamed[name] = tensor
    out.load_state_dict(renamed)
    record = {"command": f"python scripts/keep_layers.py {args.model} {args.out} --layers {args.layers}",
              "from": str(src_dir), "layers_kept": keep}
    save_model(out, Tokenizer.from_dir(src_dir), args.out, dtype=torch.float16,
               extra_files={"training.json": json.dumps(record, indent=2) + "\n"})
    print(f"{args.out}: layers {keep} of {n} from {args.model}, {sum(p.numel() for p in out.parameters()) / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
