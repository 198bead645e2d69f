"""The compiled decode step: ``torch.compile`` of the packed path (``packed.py``) with static
shapes (gpt-fast's approach, with vLLM's padding to a few sizes), attending over the whole
preallocated cache under a mask, so that a call's graph depends on a few sizes only.

- **Tokens per row** are padded up to the next of ``TOKEN_BUCKETS`` (1, 2, 4, ... 64): a call
  of 5 tokens runs the 8-token graph. A pad token sits after the row's real ones, writes its
  key/value into a slot past them (uncommitted: the next write overwrites it), sees only
  itself, is seen by no real token (the contract's masks hide every slot past a row's own
  tokens) and its logits are dropped: pads are inert.
- **Rows** (the batch) are a dynamic size: one graph serves every batch of two rows or more
  (and one the single row, which torch specialises).
- **Cache sizes** come in powers of two from 256 slots (``NativeModel.new_cache``), with 64
  slots of room for pads.

So a whole bench run compiles a bounded number of graphs: per bucket used and cache size, at
most four (one row or several; the causal mask, built in the graph, or an explicit one: trees,
ragged rows); each bucket is its own compiled function (``_own_code``), holding at most
torch's 8 graphs. Calls after an empty cache (prefill) and longer calls stay eager; so do
bidirectional and sliding-window models. Rows of different lengths write at their own slots
(a scatter), in the same graph. The eager packed path is the reference it is tested against
(tests/test_compiled.py).

The functions here take the ``NativeModel`` whose step they run (``model``).
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from paragen.cache import KVCache
from paragen.models.base import expand_mask
from paragen.models.native.layers import rope_tables
from paragen.models.native.packed import packed_hidden_states

# The compiled step's call sizes: a call of T tokens per row runs the graph of the next bucket
# up, padded.
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def token_bucket(t: int) -> int | None:
    """The compiled call size a call of ``t`` tokens per row runs as, or None above the largest."""
    return next((b for b in TOKEN_BUCKETS if b >= t), None)


def cache_length(length: int) -> int:
    """The slots a compiled model's cache holds for ``length`` positions: a few sizes (powers of
    two from 256) compile once each, where every generation's own length would recompile; 64
    more slots hold a padded call's pads."""
    return max(256, 1 << (length - 1).bit_length()) + TOKEN_BUCKETS[-1]


class _SlotWriter:
    """The cache write of the compiled step: new keys/values into each row's slot indices
    [B, T] (a tensor, so the compiled graph does not depend on the rows' lengths); attention
    then reads every slot, under the step's mask."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], slots: torch.Tensor) -> None:
        self.k, self.v, self.slots = k, v, slots

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.slots[:, None, :, None].expand_as(k)
        self.k[layer].scatter_(2, idx, k)
        self.v[layer].scatter_(2, idx, v)
        return self.k[layer], self.v[layer]


def _step(model, tokens, positions, slots, mask, ks, vs) -> tuple[torch.Tensor, torch.Tensor]:
    """The traced step, bound to the model (``compile_steps``): (logits, hidden) of the padded call."""
    if mask is None:  # causal: query t of row b sees the slots up to its own
        keys = torch.arange(ks[0].shape[2], device=tokens.device)
        mask = (keys[None, None, :] <= slots[:, :, None])[:, None]
    n = len(model.packed.layers)
    cos, sin = rope_tables(model.inv_freq, positions, model.dtype)
    hidden = packed_hidden_states(model.packed, model.config, model.model, tokens, cos, sin,
                                  _SlotWriter(ks, vs, slots), [mask] * n, [False] * n)
    return model.packed.lm_head(hidden), hidden


def _own_code(fn: Callable, name: str) -> Callable:
    """``fn`` as a function of its own code object named ``name``: torch.compile keeps its graphs
    per code object, at most ``recompile_limit`` (8) each, so one code object per call-size
    bucket gives each bucket its own graphs without changing the process-wide limit."""
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def compile_steps(model: nn.Module) -> dict[int, Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
    """One compiled step per bucket, each a method of ``model`` (``NativeModel.compile_decode``)."""
    # On CUDA each graph is also captured as a CUDA graph (vLLM's and gpt-fast's way to skip
    # the per-kernel launch cost); torch replays it where its inputs allow, else runs it as is.
    mode = "reduce-overhead" if model.lm_head.weight.device.type == "cuda" else None
    return {t: torch.compile(types.MethodType(_own_code(_step, f"paragen_step_{t}"), model), dynamic=False, mode=mode)
            for t in TOKEN_BUCKETS}


def runs_compiled(model: nn.Module, tokens: torch.Tensor, cache: KVCache) -> bool:
    """Whether a call of ``tokens`` on ``cache`` runs the compiled step (see the module docstring)."""
    return (model.config.attention == "causal" and not model.sliding and cache.length > 0
            and token_bucket(tokens.shape[1]) is not None
            and cache.length + token_bucket(tokens.shape[1]) <= cache.max_length)


def compiled_forward(model: nn.Module, tokens, positions, cache: KVCache, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled step of a call of T tokens per row, padded to its bucket: writes each
    row's slots ``[rows[b], rows[b] + T)`` like ``KVCache.write``; (logits, hidden) [B, T, ...]."""
    B, T = tokens.shape
    n, dev = token_bucket(T), tokens.device
    slots = cache.slots(T)
    if n > T:  # pads after each row's tokens: positions and slots continue past them
        more = torch.arange(1, n - T + 1, device=dev)
        tokens = F.pad(tokens, (0, n - T))
        positions = torch.cat([positions, positions[:, -1:] + more], 1)
        slots = torch.cat([slots, slots[:, -1:] + more], 1)
    full = None  # causal: the graph builds it from the slots (a query sees its row's slots up to its own)
    if mask is not None:  # the contract mask over [length + T] keys, widened to every slot; a pad sees itself only
        past = cache.length
        visible = expand_mask(mask, past, T, True, dev)[:, 0]  # [B|1, T, past + T]
        full = torch.arange(cache.max_length, device=dev)[None, None, :] == slots[:, :, None]
        full[:, :T, : past + T] = visible
        full = full[:, None]
    if B > 1:  # one graph for every batch of two rows or more (torch specialises a single row)
        for x in (tokens, positions, slots, *([full] if full is not None else []), *cache.k, *cache.v):
            torch._dynamo.mark_dynamic(x, 0)
    logits, hidden = model.compiled[n](tokens, positions, slots, full, cache.k, cache.v)
    return logits[:, :T], hidden[:, :T]
