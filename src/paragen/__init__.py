"""paragen: fast parallel decoding of generative sequence models behind one API."""

from paragen.api import generate, load, stream
from paragen.driver import Generation, Stats
from paragen.errors import ParagenError
from paragen.heads import load_heads
from paragen.strategies import STRATEGIES

__all__ = ["STRATEGIES", "Generation", "ParagenError", "Stats", "generate", "load", "load_heads", "stream"]
__version__ = "0.1.0"
