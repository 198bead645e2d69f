"""paragen: fast parallel decoding of generative sequence models behind one API.

The public names are imported on first use (PEP 562), so ``import paragen.cli`` does not
load torch: the command line is inside its own error handling before torch loads, and an
interrupt during the slow imports ends with one line, not a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from paragen.errors import ParagenError

if TYPE_CHECKING:
    from paragen.api import generate, stream
    from paragen.driver import Generation, Stats
    from paragen.heads import load_heads
    from paragen.infilling import infill
    from paragen.loading import load
    from paragen.speech.api import transcribe
    from paragen.strategies import STRATEGIES
    from paragen.streaming import Stream

__all__ = ["STRATEGIES", "Generation", "ParagenError", "Stats", "Stream", "generate", "infill", "load", "load_heads",
           "stream", "transcribe"]
__version__ = "0.1.0"

_HOME = {"generate": "paragen.api", "load": "paragen.loading", "stream": "paragen.api", "Stream": "paragen.streaming",
         "Generation": "paragen.driver", "Stats": "paragen.driver", "STRATEGIES": "paragen.strategies",
         "load_heads": "paragen.heads", "infill": "paragen.infilling", "transcribe": "paragen.speech.api"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'paragen' has no attribute '{name}'")
