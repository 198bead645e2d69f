"""Character and word error rates (Levenshtein distance over characters or words)."""

from __future__ import annotations

from collections.abc import Sequence


def edit_distance(hyp: Sequence, ref: Sequence) -> int:
    """Insertions + deletions + substitutions turning ``hyp`` into ``ref``."""
    prev = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        cur = [i]
        for j, r in enumerate(ref, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (h != r)))
        prev = cur
    return prev[-1]


def error_rate(hyps: list[str], refs: list[str], unit: str) -> float:
    """Corpus CER (``unit="char"``) or WER (``"word"``): total edits / total reference units."""
    split = (lambda s: list(s)) if unit == "char" else (lambda s: s.split())
    edits = sum(edit_distance(split(h), split(r)) for h, r in zip(hyps, refs, strict=True))
    return edits / max(1, sum(len(split(r)) for r in refs))
