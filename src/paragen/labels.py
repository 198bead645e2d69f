"""How a generation's statistics read in every output mode (``generate --stats``, the bench,
the server's usage block): whether it is lossy, and what its drafts achieved.

``Stats.extra`` says a result is lossy in two ways: a lossy strategy sets ``lossy: True``,
and the API names a weight format or dtype that changes what float32 computes in
``weights``, with the suffix " (lossy)" (``Model.weight_format``: 'int8-weights (lossy)',
'bfloat16 (lossy)'). Draft-and-verify strategies keep ``proposed`` / ``accepted`` per draft
position and ``nodes`` (``paragen.strategies.counts``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LOSSY_SUFFIX = " (lossy)"


def lossy(extra: Mapping[str, Any] | None) -> bool:
    """Whether the output may differ from exact decoding (a lossy strategy, lossy weights, or both)."""
    extra = extra or {}
    return extra.get("lossy") is True or str(extra.get("weights", "")).endswith(LOSSY_SUFFIX)


def label(extra: Mapping[str, Any] | None) -> str:
    """'lossy', 'lossy (weights: int8-weights)', 'weights: fp16-weights' (exact) or '' (exact float32/64)."""
    extra = extra or {}
    weights = extra.get("weights")
    named = f"weights: {str(weights).removesuffix(LOSSY_SUFFIX)}" if weights else ""
    if lossy(extra):
        return f"lossy ({named})" if named else "lossy"
    return named


def draft_totals(extra: Mapping[str, Any] | None) -> tuple[int, int, int] | None:
    """(draft positions proposed, accepted, drafted tokens verified) summed over steps, or
    None for a strategy that drafts nothing (``ar``, diffusion)."""
    extra = extra or {}
    if "nodes" not in extra:
        return None
    return sum(extra["proposed"]), sum(extra["accepted"]), int(extra["nodes"])
