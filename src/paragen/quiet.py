"""Keep transformers' loading progress bars off paragen's output, without changing them for good."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within the block, transformers draws no progress bars (its "Loading weights" bar on
    every ``from_pretrained``); after it, the previous setting is back. Warnings still show.

    transformers keeps this switch module-wide, so it is set for the block only: a caller
    who enabled or disabled bars for their own use finds them as they left them.
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
