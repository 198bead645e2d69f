"""Position-addressed, preallocated key/value cache, owned by the caller.

A forward pass with a cache writes the keys and values of its T new tokens into slots
``[length, length + T)`` and attends to slots ``[0, length + T)``. It never moves
``length``: the caller decides what to keep, so a rejected speculation costs nothing to
undo (gpt-fast keeps its cache the same way).

    commit(n)      accept the first n pending slots (length += n)
    keep(indices)  accept the pending slots at these offsets, in this order (a tree path)
    truncate(n)    forget everything from slot n on
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value tensors of shape [B, H_kv, S_max, D]."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch, num_kv_heads, max_length, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_length = max_length
        self.length = 0

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H_kv, T, D] after the committed slots; return all live slots."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise IndexError(f"cache overflow: {end} slots needed, {self.max_length} allocated")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def commit(self, n: int) -> None:
        if n < 0 or self.length + n > self.max_length:
            raise IndexError(f"cannot commit {n} slots at length {self.length}")
        self.length += n

    def keep(self, indices: list[int] | torch.Tensor) -> None:
        """Accept pending slots ``length + indices`` (ascending offsets) and compact them."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.k[0].device)
        n = int(idx.numel())
        src = self.length + idx
        for buf in (*self.k, *self.v):
            buf[:, :, self.length : self.length + n] = buf.index_select(2, src)
        self.length += n

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise IndexError(f"cannot truncate to {n}: length is {self.length}")
        self.length = n
