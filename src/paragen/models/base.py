"""The one model contract every strategy runs on.

``forward(tokens[B, T], positions[B, T], cache=None, mask=None) -> logits[B, T, V]``

``forward(..., return_hidden=True) -> (logits[B, T, V], hidden[B, T, H])``: the same call
also returns the final-norm hidden states (the output projection's input), for prediction
heads and feature drafters; ``head_weights()`` gives the input embedding and output
projection that heads share with the model.

- ``positions`` are the RoPE positions of the new tokens (tree nodes share a depth, so
  they need not be consecutive).
- ``cache``: an object from ``new_cache()``; new keys/values go after its committed
  slots, and the model never advances it.
- ``mask``: bool, True where attention is allowed, shape ``[B or 1, T, S]`` with ``S`` the
  live slots (committed + T), or ``[B or 1, T, T]`` over the new tokens only, in which
  case every committed slot is visible. ``None`` means the model's own default: causal
  for a causal model, full for a bidirectional one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ModelInfo:
    """What an algorithm may know about a model: nothing model-specific lives in a strategy."""

    vocab_size: int
    max_length: int
    eos_ids: tuple[int, ...]
    mask_id: int | None
    attention: str  # "causal" | "bidirectional" | "block_causal"
    block_size: int | None = None
    # Diffusion models only: True when the logits at position i predict the token at i + 1,
    # as in an AR model (Dream's and Fast-dLLM v2's "shift", which keeps an AR model's
    # prediction head when adapting it to diffusion); False when they predict position i.
    shift: bool = False


def dtype_label(dtype: torch.dtype) -> str | None:
    """None for float32 and float64 (exact); else the dtype named lossy ('bfloat16 (lossy)'): a
    dtype below float32 rounds every weight and activation, so the output may differ from float32's."""
    if dtype in (torch.float32, torch.float64):
        return None
    return f"{str(dtype).removeprefix('torch.')} (lossy)"


class Model(ABC):
    """Abstract model: the native backend and the transformers adapter both implement it."""

    info: ModelInfo
    tokenizer: Any  # paragen.tokenizer.Tokenizer, attached by load()
    name: str = "model"

    @abstractmethod
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: Any | None = None,
        mask: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embedding [V, H], output projection [V, H]) as used by ``forward``, detached:
        prediction heads read hidden states out through the model's own projection."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its embedding and output projection")

    @abstractmethod
    def new_cache(self, batch: int = 1, max_length: int | None = None) -> Any: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    def weight_format(self) -> str | None:
        """How the weights compute, where that is not float32 or float64: ``dtype_label``.
        Every Generation's stats carry it (``extra["weights"]``)."""
        return dtype_label(self.dtype)

    def __call__(self, tokens, positions, cache=None, mask=None, return_hidden=False):
        if return_hidden:
            return self.forward(tokens, positions, cache=cache, mask=mask, return_hidden=True)
        return self.forward(tokens, positions, cache=cache, mask=mask)


def expand_mask(mask: torch.Tensor | None, past: int, t: int, causal: bool, device) -> torch.Tensor | None:
    """Turn a contract mask into a full bool mask [B|1, 1, T, past + T], or None for 'all visible'.

    Shared by both backends so that they read masks identically.
    """
    if mask is None:
        if not causal or t == 1:  # one new causal token sees every slot
            return None
        new = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    else:
        new = mask.to(torch.bool)
        if new.dim() == 2:
            new = new[None]
        if new.shape[-1] == past + t:
            return new[:, None]
        if new.shape[-1] != t:
            raise ValueError(f"mask last dim must be {t} or {past + t}, got {new.shape[-1]}")
    if new.dim() == 2:
        new = new[None]
    prefix = torch.ones(*new.shape[:-1], past, dtype=torch.bool, device=device)
    return torch.cat([prefix, new], dim=-1)[:, None]


def window_mask(full: torch.Tensor | None, positions: torch.Tensor, past: int, window: int) -> torch.Tensor:
    """AND a causal sliding window into an expanded mask ``full`` [B|1, 1, T, past + T] (None: all visible).

    The window is by position, as transformers applies it (masking_utils.sliding_window_overlay:
    key visible iff ``k_pos > q_pos - window``, i.e. ``q_pos - k_pos < window``): committed slot
    j holds position j (trees are compacted with ``cache.keep``), new token i has
    ``positions[:, i]``. Shared by both backends so that they slide identically.
    """
    B = positions.shape[0]
    committed = torch.arange(past, device=positions.device).expand(B, past)
    keys = torch.cat([committed, positions], dim=1)  # [B, S]
    near = (positions[:, :, None] - keys[:, None, :] < window)[:, None]  # [B, 1, T, S]
    return near if full is None else full & near
