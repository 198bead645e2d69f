"""Position-addressed, preallocated key/value cache, owned by the caller.

A forward pass with a cache writes the keys and values of its T new tokens into slots
``[length, length + T)`` and attends to slots ``[0, length + T)``. It never moves
``length``: the caller decides what to keep, so a rejected speculation costs nothing to
undo (gpt-fast keeps its cache the same way).

    commit(n)      accept the first n pending slots (length += n)
    keep(indices)  accept the pending slots at these offsets, in this order (a tree path)
    truncate(n)    forget everything from slot n on

Batches: per-row lengths. Row b holds its committed tokens in slots ``[0, rows[b])``, in
order, with no holes, so slot j of row b always holds position j; a forward writes row b's
T new tokens at ``[rows[b], rows[b] + T)`` (a scatter when rows differ), ``length`` is the
longest row, and ``mask(T)`` hides from each row the slots past its own tokens. The
alternative, one shared slot counter with the rejected drafts of each row left as masked
holes, needs no scatter but grows every row by the most tokens any row was fed per step
(k + 1 for a chain, whatever was accepted), so attention reads ever more dead slots and the
cache must be sized for the worst case; per-row lengths keep slots = committed tokens,
RoPE positions = slot indices (sliding windows stay correct), and need only the rows' ints
on the host, which the driver knows anyway from the committed tokens.

    commit_rows(ns)    row b accepts its first ns[b] pending slots
    keep_rows(offs)    row b accepts the pending slots at offsets offs[b] (its tree's path)
    truncate_rows(ns)  row b forgets everything from slot ns[b] on
    select(rows)       keep these rows only, in this order (finished rows leave the batch)
    extend(other)      append another cache's rows (rows joining a running batch)
    tree_mask(trees)   the mask of N new tokens per row related by each row's token tree
"""

from __future__ import annotations

import torch


class OneRowCache:
    """The per-row interface (``rows``, ``slots``, ``mask``, ``commit_rows``, ``keep_rows``,
    ``truncate_rows``, ``tree_mask``, ``select``) for a cache that keeps one length, such as
    the transformers adapter's: it holds a batch of one, so batched strategies run on it one
    prompt at a time."""

    length: int
    uniform = True

    @property
    def rows(self) -> list[int]:
        return [self.length]

    def slots(self, t: int) -> torch.Tensor:
        return torch.arange(self.length, self.length + t)[None]

    def mask(self, t: int) -> None:
        return None

    def commit_rows(self, ns: list[int]) -> None:
        (n,) = ns
        self.commit(n)

    def truncate_rows(self, ns: list[int]) -> None:
        (n,) = ns
        self.truncate(n)

    def keep_rows(self, offsets: list[list[int]]) -> None:
        (off,) = offsets
        self.keep(off)

    def tree_mask(self, trees: torch.Tensor) -> torch.Tensor:
        """The one row's tree [N, N]: the model prefixes its committed slots (visible to all)."""
        (tree,) = trees
        return tree

    def select(self, rows: list[int]) -> None:
        if list(rows) != [0]:
            raise ValueError(f"a cache of one row cannot select rows {rows}")


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
        self._set_rows([0] * batch)

    def _set_rows(self, rows: list[int]) -> None:
        """Every change of the rows' lengths goes through here: ``length`` and the cached slot
        index follow, so a step builds its index once (one small host-to-device copy)."""
        self.rows = rows
        self.length = max(rows, default=0)
        self.uniform = all(r == self.length for r in rows)
        self._slots: torch.Tensor | None = None  # [B, T] slots of the pending write, built lazily

    @property
    def device(self) -> torch.device:
        return self.k[0].device

    def slots(self, t: int) -> torch.Tensor:
        """Slot (= position) of each row's next t tokens [B, t], on the cache's device."""
        if self._slots is None or self._slots.shape[1] != t:
            # non_blocking: a host-to-device copy that does not wait for the device's queue
            start = torch.tensor(self.rows).to(self.device, non_blocking=True)
            self._slots = start[:, None] + torch.arange(t, device=self.device)
        return self._slots

    def mask(self, t: int) -> torch.Tensor | None:
        """Attention mask [B, t, length + t] for a chain of t new tokens per row: a token sees
        its row's committed slots and the new tokens up to itself, never another row's or a
        longer row's slots. None when every row has the same length (the causal default)."""
        if self.uniform:
            return None
        every = torch.arange(self.length + t, device=self.device)
        return every[None, None, :] <= self.slots(t)[:, :, None]

    def tree_mask(self, trees: torch.Tensor) -> torch.Tensor:
        """Attention mask [B, N, length + N] for N new tokens per row written after each row's
        committed slots, related by trees [B, N, N] (new token i sees new token j iff
        ``trees[b, i, j]``: ancestor or self): each row's committed slots and its own tree."""
        B, N, _ = trees.shape
        every = torch.arange(self.length + N, device=self.device)[None, None, :]
        start = self.slots(1)[:, :, None]  # [B, 1, 1]: each row's first new slot
        offset = every - start  # [B, 1, S]: which new token a slot holds, if any
        inside = (offset >= 0) & (offset < N)
        tree = trees.to(self.device).gather(2, offset.clamp(0, N - 1).expand(B, N, -1))
        return (offset < 0) | (inside & tree)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H_kv, T, D] after each row's committed slots; return all live slots."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise IndexError(f"cache overflow: {end} slots needed, {self.max_length} allocated")
        if self.uniform:
            self.k[layer][:, :, self.length : end] = k
            self.v[layer][:, :, self.length : end] = v
        else:
            idx = self.slots(k.shape[2])[:, None, :, None].expand_as(k)  # [B, H_kv, T, D]
            self.k[layer].scatter_(2, idx, k)
            self.v[layer].scatter_(2, idx, v)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def commit(self, n: int) -> None:
        if n < 0 or self.length + n > self.max_length:
            raise IndexError(f"cannot commit {n} slots at length {self.length}")
        self._set_rows([r + n for r in self.rows])

    def commit_rows(self, ns: list[int]) -> None:
        if len(ns) != len(self.rows) or any(n < 0 or r + n > self.max_length for r, n in zip(self.rows, ns)):
            raise IndexError(f"cannot commit {ns} slots at lengths {self.rows}")
        self._set_rows([r + n for r, n in zip(self.rows, ns)])

    def keep(self, indices: list[int] | torch.Tensor) -> None:
        """Accept pending slots ``length + indices`` (ascending offsets) and compact them."""
        if not self.uniform:
            raise ValueError("keep() needs every row at the same length: use keep_rows() for rows of different lengths")
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        n = int(idx.numel())
        src = self.length + idx
        for buf in (*self.k, *self.v):
            buf[:, :, self.length : self.length + n] = buf.index_select(2, src)
        self._set_rows([r + n for r in self.rows])

    def keep_rows(self, offsets: list[list[int]]) -> None:
        """Row b accepts its pending slots ``rows[b] + offsets[b]`` (ascending), compacted in
        that order right after its committed ones (``keep`` per row: each row's tree path)."""
        if len(offsets) != len(self.rows) or any(r + len(o) > self.max_length for r, o in zip(self.rows, offsets)):
            raise IndexError(f"cannot keep {offsets} at lengths {self.rows}")
        for b, (r, off) in enumerate(zip(self.rows, offsets)):
            if off == list(range(len(off))):
                continue  # already in place
            src = torch.tensor(off, dtype=torch.long, device=self.device) + r
            for buf in (*self.k, *self.v):
                buf[b, :, r : r + len(off)] = buf[b].index_select(1, src)
        self._set_rows([r + len(o) for r, o in zip(self.rows, offsets)])

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise IndexError(f"cannot truncate to {n}: length is {self.length}")
        self._set_rows([min(r, n) for r in self.rows])

    def truncate_rows(self, ns: list[int]) -> None:
        if len(ns) != len(self.rows) or any(not 0 <= n <= r for r, n in zip(self.rows, ns)):
            raise IndexError(f"cannot truncate lengths {self.rows} to {ns}")
        self._set_rows(list(ns))

    def select(self, rows: list[int]) -> None:
        """Keep these rows (indices into the current batch), in this order; the others' slots are freed."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.k = [buf.index_select(0, idx) for buf in self.k]
        self.v = [buf.index_select(0, idx) for buf in self.v]
        self._set_rows([self.rows[i] for i in rows])

    def extend(self, other: KVCache) -> None:
        """Append ``other``'s rows after these (rows joining a running batch), keeping their
        lengths; both are widened to the larger ``max_length`` (new slots are empty)."""
        S = max(self.max_length, other.max_length)

        def widen(buf: torch.Tensor) -> torch.Tensor:
            return buf if buf.shape[2] == S else torch.nn.functional.pad(buf, (0, 0, 0, S - buf.shape[2]))

        self.k = [torch.cat([widen(a), widen(b)]) for a, b in zip(self.k, other.k)]
        self.v = [torch.cat([widen(a), widen(b)]) for a, b in zip(self.v, other.v)]
        self.max_length = S
        self._set_rows(self.rows + other.rows)
