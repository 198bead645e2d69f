"""``infill(model, prefix, suffix)``: fill a hole in the middle of code with a diffusion model.

The canvas is the prefix, ``max_new_tokens`` masks (the hole), then the suffix; the masks are
denoised by ``diffusion`` with any of its rules and orderings, every call seeing both sides
(full attention). The prefix and suffix tokens are never changed.

**The hole's length is the model's choice, in one decode.** A model trained with
``paragen train diffusion --infill F`` learned holes laid out as the span followed by
end-of-text tokens up to the suffix (as LLaDA's SFT pads an answer with EOS), so it writes
the span and then end-of-text; the text ends at the first end-of-text. We chose this over
decoding once per candidate length and ranking the lengths by the model's likelihood: one
decode instead of one per length, and no prior over lengths to pick (a masked-diffusion
model's likelihoods of different lengths are each normalised on their own, so comparing
them needs one). A model trained without ``--infill`` fills every mask: give it the exact
length with ``max_new_tokens``.

An AR model sees only the prefix and a block-causal model sees nothing past its block, so
neither can use the suffix: both are refused with what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from paragen.driver import Generation, decode
from paragen.errors import ContextLengthError, InvalidInputError, UnsupportedOptionError
from paragen.models.base import Model
from paragen.request import _prompt_ids, check_request, context, row_generator
from paragen.streaming import exhaust

DEFAULT_HOLE = 64  # masks when max_new_tokens is not given: a few lines of code (training holes: span + pads <= 128)


def infill(
    model: Model,
    prefix: str | Sequence[int],
    suffix: str | Sequence[int],
    max_new_tokens: int | None = None,
    strategy: str = "diffusion",
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    **options: Any,
) -> Generation:
    """Fill the hole between ``prefix`` and ``suffix`` (strings, or token ids); returns the
    hole's ``Generation`` (its tokens and text, without the end-of-text that closed it).

    ``max_new_tokens``: the hole's masks, the most it can hold (default 64); the model ends the
    text earlier with end-of-text. ``strategy``: ``diffusion``, with its options (``rule``,
    ``threshold``, ``ordering``, ``block_length``, ``cache`` ...); sampling as in ``generate``.
    """
    info = model.info
    if info.mask_id is None or info.attention == "causal":
        raise UnsupportedOptionError(
            "infill needs a masked-diffusion model with full attention (e.g. code-diffusion): an autoregressive "
            "model sees only the prefix; use generate() to continue the prefix instead")
    if info.attention != "bidirectional":
        raise UnsupportedOptionError(
            f"infill needs full attention, and this model's is {info.attention}: a block-causal model sees nothing "
            "past its block, so it cannot read the suffix; use a full-attention diffusion model such as code-diffusion")
    if strategy != "diffusion":
        raise UnsupportedOptionError(f"infill decodes with 'diffusion' (its rules and orderings are options), not "
                                     f"'{strategy}'")
    n = DEFAULT_HOLE if max_new_tokens is None else max_new_tokens
    before, after = _ids(model, prefix), _ids(model, suffix)
    if not before and not after:
        raise InvalidInputError("infill needs a prefix or a suffix (or both) around the hole; both are empty")
    if not before:
        # A hole at the start of a file: end-of-text precedes a file in training (the corpus is
        # files joined by it), and a shifted model predicts each position from the one before.
        before = [info.eos_ids[0]] if info.eos_ids else None
        if before is None:
            raise InvalidInputError("this model has no end-of-text token to stand before a hole at the start: "
                                    "give a prefix")
    request = check_request(model, [before], strategy, n, temperature, top_k, top_p, seed, None, None, None, options)
    if len(before) + n + len(after) > info.max_length:
        raise ContextLengthError(
            f"prefix ({len(before)} tokens) + hole ({n}) + suffix ({len(after)}) exceeds the model context of "
            f"{info.max_length}: shorten the prefix or suffix, or ask for a smaller hole")
    ctx = context(model, request, [row_generator(model, request.seeds[0])], request.cache_length + len(after))
    decoder = request.strategy(ctx, request.options, suffix=after)
    with torch.inference_mode():
        return exhaust(decode(decoder, ctx, request.prompts, n, model.tokenizer, info.eos_ids))[0]


def _ids(model: Model, text: str | Sequence[int]) -> list[int]:
    """Token ids of a prefix or suffix (checked as a prompt is); empty is allowed (a hole at the
    start or the end of a file)."""
    return _prompt_ids(model, text) if len(text) else []
