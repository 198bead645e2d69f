"""Prediction heads and feature drafters that ride on a frozen target: modules and load/save.

The decoding loops that use them are strategies (``blockwise``, ``medusa``, ``hydra``,
``eagle``); training is ``paragen.train.heads``.
"""

from __future__ import annotations

from paragen.heads.io import (
    builtin_heads,
    builtin_heads_for,
    check_target,
    default_heads,
    fingerprint,
    load_heads,
    new_heads,
    save_heads,
)
from paragen.heads.modules import KINDS, Heads, HeadsConfig, make_heads

__all__ = ["KINDS", "Heads", "HeadsConfig", "builtin_heads", "builtin_heads_for", "check_target", "default_heads",
           "fingerprint", "load_heads", "make_heads", "new_heads", "save_heads"]
