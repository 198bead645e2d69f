"""torch's CPU thread count for a command's duration: the decoding default and the context manager."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from paragen.errors import InvalidInputError

# torch CPU threads for `paragen generate` and `paragen bench` unless --threads says otherwise.
# Measured with scripts/threads.sh on a 2-core machine under load (load average 6-7, training
# jobs running): code-target ar 114-199 tok/s on 1 thread against 4-8 tok/s on 2; lookahead
# 75-125 against 5-7. Batch-1 decoding of small models has little work to split per token, and
# a thread that waits for a busy core stalls every step. Quiet, 2 threads gain 1.5x (ar 264-279
# tok/s against 394-406; lookahead 181-184 against 269-290): a third lost when quiet against
# 95% lost when loaded, so 1 is the default and --threads 2 the advice for a quiet machine.
DEFAULT_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous count.

    torch's thread count is process-wide, so commands set it for their own duration only
    (``paragen generate`` / ``bench`` ``--threads``; default ``DEFAULT_THREADS``).
    """
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"threads must be an integer >= 1, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
