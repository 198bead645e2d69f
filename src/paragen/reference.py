"""The test oracle: greedy decoding with no cache at all (full recompute every step)."""

from __future__ import annotations

import torch

from paragen.models.base import Model


@torch.inference_mode()
def reference_greedy(model: Model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """New tokens of greedy decoding, stopping at max_new_tokens or before the first EOS."""
    seq = list(prompt)
    out: list[int] = []
    for _ in range(max_new_tokens):
        x = torch.tensor([seq])
        logits = model(x, torch.arange(len(seq))[None])
        token = int(logits[0, -1].argmax())
        if token in model.info.eos_ids:
            break
        seq.append(token)
        out.append(token)
    return out
