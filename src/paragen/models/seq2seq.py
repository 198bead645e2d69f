"""The sequence-to-sequence contract, beside the decoder-only one (``paragen.models.base``).

    memory = model.encode(features[B, T, F], lengths[B])        once per batch of inputs
    decoder = model.bind(memory)                                 a decoder-only ``Model`` over those rows
    decoder(tokens[B, T], positions[B, T], cache, mask) -> logits[B, T, V]

The decoder is the causal-LM contract with the encoder's memory as cross-attention input,
so every strategy that runs a causal LM (``ar``, the chain strategies, the driver's stopping,
streaming, statistics and batches) runs it unchanged. Its cache, a ``MemoryCache``, carries
each row's memory beside the row's keys and values: a row that leaves the batch
(``select``) or joins it (``extend``) takes its memory with it, so the decoder never needs
to be told which rows are left. A forward without a cache reads the memory it was bound to.

A memory is any object with ``select(rows)`` and ``extend(other)`` that return new memories
(the speech model's ``Encoded``: memory, padding mask and CTC logits per row).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import torch

from paragen.cache import KVCache
from paragen.models.base import Model, ModelInfo


class Memory(Protocol):
    """An encoder's output for a batch of rows."""

    def select(self, rows: list[int]) -> Memory: ...

    def extend(self, other: Memory) -> Memory: ...


class MemoryCache(KVCache):
    """A decoder's position-addressed KV cache that also holds each row's encoder memory."""

    def __init__(self, memory: Memory, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memory = memory

    def select(self, rows: list[int]) -> None:
        """Keep these rows (repeats allowed: beam search copies a parent's row) and their memories."""
        super().select(rows)
        self.memory = self.memory.select(rows)

    def extend(self, other: MemoryCache) -> None:
        super().extend(other)
        self.memory = self.memory.extend(other.memory)


class Seq2SeqModel(ABC):
    """An encoder-decoder: ``info`` (attention ``"encoder-decoder"``; its decoder's vocabulary,
    ``eos_ids``, ``mask_id``), a ``tokenizer`` for the decoder's tokens, and the two calls."""

    info: ModelInfo
    tokenizer: Any

    @abstractmethod
    def encode(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> Memory:
        """The memory of a batch of padded inputs [B, T, F] with ``lengths`` [B] valid frames."""

    @abstractmethod
    def bind(self, memory: Memory) -> Model:
        """The decoder-only contract over ``memory``'s rows (its caches are ``MemoryCache``s)."""
