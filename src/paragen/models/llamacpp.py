"""llama.cpp as a model backend (``backend="llamacpp"``; ``pip install 'paragen[llamacpp]'``).

The model contract (``paragen.models.base``) on llama.cpp's low-level API through
llama-cpp-python: one ``llama_decode`` per call, logits requested for every fed token, so every
strategy runs on llama.cpp's step unchanged. What does not map one to one is the cache.

paragen's cache is slots written by position; masks say which slot a token sees. llama.cpp's
KV memory is cells, each holding a position and a set of sequence ids; a token fed with
sequence ids ``[q, ...]`` sees the cells that hold ``q`` at positions up to its own
(llama.cpp reads a token's first id for its attention). So every call must be a *tree of
consecutive positions*: each new token sees exactly one chain of ancestors, one per position,
from 0 to its own. Causal chains, token trees (``tree``, ``eagle``, ``medusa``...), a draft's
level-by-level trees and lookahead's window and n-grams all are; a bidirectional call
(diffusion) is not, and is refused naming the backends that run it.

A tree maps onto sequence ids as in SpecInfer's tree attention: every leaf gets a sequence id,
and a node holds the ids of the leaves below it, so a node's query id selects exactly its
ancestors and the committed prefix. This module keeps a host mirror of each row's cells
(``_Row``: position and parent of every slot, the tip of every sequence id) and turns cache
operations into llama.cpp's sequence operations:

    new leaf under cell a       seq_cp(s, leaf, 0, pos(a) + 1): the leaf's id joins a's chain
                                (reusing a's own id when a is the tip of its chain)
    truncate / drop pending     seq_rm(s, pos, -1) on each id past the committed slots
    keep(path)                  the path's id is copied into the row's main id, every other
                                id of the row removed (cells left with no id are freed)
    rows                        a row takes one id (its main one) from the context's pool, and
                                more while a call's tree has more leaves; they return on keep,
                                truncate and when the row leaves

The size limit that follows: the leaves of every row's tree in one call, plus the rows, at most
``n_seq_max`` ids, which llama.cpp caps at 256 (``LLAMA_MAX_SEQ``); a larger tree is refused
with a clear error. The KV memory (``n_ctx`` cells) is shared by every row and tree node.

Hidden states for heads are llama.cpp's per-token embeddings (``embeddings=True``, no
pooling: the final norm's output, the output projection's input);
the first call that asks for them checks ``hidden @ output.T == logits`` on its own tokens
and refuses heads where that fails (tests/test_llamacpp.py compares them with the native
backend's as well).
"""

from __future__ import annotations

import ctypes
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paragen.errors import InvalidInputError, ModelLoadError, UnsupportedOptionError
from paragen.models.base import Model, ModelInfo

# llama.cpp's LLAMA_MAX_SEQ: a context with more sequence ids fails to initialise.
MAX_SEQ = 256
# Architectures whose GGUF this backend loads: causal decoders whose final-norm states feed
# the output projection directly (what heads read). Others are refused at load time.
ARCHITECTURES = ("llama", "qwen2", "qwen3")
# Weight types by paragen's names: --dtype's names map onto GGUF types for this backend
# (fp16-weights -> f16, int8-weights -> q8_0), and the GGUF names are accepted as they are.
WEIGHTS = {"float32": "f32", "f32": "f32", "fp16-weights": "f16", "float16": "f16", "f16": "f16",
           "int8-weights": "q8_0", "q8_0": "q8_0"}
# How each GGUF type computes on llama.cpp's CPU backend: ggml converts the activations to the
# weights' dot-product type (f16, or 8-bit blocks for q8_0), so only f32 is exact.
LABELS = {"f32": None, "f16": "f16 GGUF (lossy: llama.cpp rounds activations to f16)",
          "q8_0": "q8_0 GGUF (lossy: 8-bit weights and activations)"}
# Tokens per row unless asked: the KV memory is allocated up front (a GGUF's own context may
# be 32k tokens or more, gigabytes of cells for a large model).
DEFAULT_LENGTH = 4096


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _llama():
    if not available():
        raise ModelLoadError("backend 'llamacpp' needs llama-cpp-python: pip install 'paragen[llamacpp]' "
                             "(it compiles llama.cpp, about 5 minutes on 2 cores)")
    import llama_cpp

    return llama_cpp


class TreeTooLargeError(UnsupportedOptionError):
    """A call whose tree has more leaves than a row has sequence ids."""


# ---------------------------------------------------------------- the host mirror of a row


class _Context:
    """The llama.cpp model and context, freed once nothing refers to them (rows release their
    sequence ids through it, so it outlives them)."""

    def __init__(self, lib, model, ctx) -> None:
        self.lib, self.model, self.ctx = lib, model, ctx
        self.mem = lib.llama_get_memory(ctx)
        self.n_seq_max = lib.llama_n_seq_max(ctx)
        self.free: list[int] = list(range(self.n_seq_max - 1, -1, -1))  # unused sequence ids (pop: the lowest)

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> None:
        self.lib.llama_memory_seq_rm(self.mem, seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        self.lib.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def __del__(self) -> None:
        if getattr(self, "ctx", None) is not None:
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = None


@dataclass
class _Row:
    """One row's cells as llama.cpp holds them. Slot j (committed first, then pending) has
    ``pos[j]`` and ``parent[j]`` (-1: none); ``tips[s]``: the deepest slot of sequence id s
    (-1: s holds no cell); a sequence's cells are its tip's chain of ancestors, one per
    position. Slots ``[0, trunk)`` are one chain (slot j at position j), the common case kept
    cheap: a causal step never walks it."""

    main: int  # the row's first sequence id: the committed tokens are its cells
    length: int = 0
    trunk: int = 0
    pos: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    tips: dict[int, int] = field(default_factory=dict)  # every id the row holds (mutated in place: see release)
    release: Any = None  # weakref.finalize: frees the row's ids once (explicitly on select, else when collected)

    def descends(self, t: int, a: int) -> bool:
        """Is slot a on slot t's chain (t itself included)?"""
        while t > a and t >= self.trunk:
            t = self.parent[t]
        return t >= a if t < self.trunk and a < self.trunk else t == a

    def holder(self, a: int) -> int:
        """A sequence id whose chain holds slot a (the main id first)."""
        for s in (self.main, *self.tips):
            if self.tips.get(s, -1) >= 0 and self.descends(self.tips[s], a):
                return s
        raise AssertionError(f"no sequence holds slot {a}")

    def chain(self, a: int, n: int) -> torch.Tensor:
        """Which of the first n slots are on slot a's chain [n] (a = -1: none)."""
        out = torch.zeros(n, dtype=torch.bool)
        while a >= self.trunk:
            out[a] = True
            a = self.parent[a]
        out[: a + 1] = True
        return out


class _Rows:
    """Sequence-id bookkeeping of one context: allocates rows and applies the row operations."""

    def __init__(self, llama: _Context) -> None:
        self.llama = llama

    def new(self) -> _Row:
        if not self.llama.free:
            import gc

            gc.collect()  # caches dropped in a reference cycle still hold their ids
        if not self.llama.free:
            raise InvalidInputError(f"all {self.llama.n_seq_max} llama.cpp sequence ids of this model are in use (one "
                                    "per row, one per tree leaf): fewer rows at once, or load with a larger n_seq_max "
                                    f"(paragen.models.llamacpp.load_llamacpp, <= {MAX_SEQ})")
        main = self.llama.free.pop()
        row = _Row(main=main, tips={main: -1})
        # The finalizer holds the row's id table, not the row: it frees whatever ids the row holds then.
        row.release = weakref.finalize(row, _release, self.llama, row.tips)
        return row

    def drop(self, row: _Row, s: int) -> None:
        self.llama.seq_rm(s, -1, -1)
        del row.tips[s]
        self.llama.free.append(s)

    def prune(self, row: _Row) -> None:
        """Remove the cells of slots past the committed ones (rejected or stale), and the ids
        left holding nothing another id does not hold too."""
        n = row.length
        if len(row.pos) == n:
            return
        for s, t in list(row.tips.items()):
            if t >= n:
                while t >= n:
                    t = row.parent[t]
                self.llama.seq_rm(s, row.pos[t] + 1 if t >= 0 else -1, -1)
                row.tips[s] = t
        for s in [s for s in row.tips if s != row.main]:
            t = row.tips[s]
            if t < 0 or any(o != s and (o == row.main or o < s or row.tips[o] != t) and row.descends(row.tips[o], t)
                            for o in row.tips):
                self.drop(row, s)
        del row.pos[n:], row.parent[n:]
        row.trunk = min(row.trunk, n)

    def keep(self, row: _Row, offsets: list[int]) -> None:
        """Accept the pending slots at ``offsets``: one path on from the committed tokens."""
        n0, idx = row.length, [row.length + o for o in offsets]
        if row.trunk < n0:
            raise InvalidInputError("keep(): the committed slots of this llamacpp cache are not one sequence; "
                                    "truncate to the sequence first")
        if any(not n0 <= i < len(row.pos) for i in idx):
            raise IndexError(f"cannot keep offsets {offsets}: {len(row.pos) - n0} pending slots")
        for k, i in enumerate(idx):
            if row.pos[i] != n0 + k or row.parent[i] != (idx[k - 1] if k else n0 - 1):
                raise InvalidInputError(f"keep({offsets}): on the llamacpp backend the kept slots must be one path "
                                        "of consecutive positions on from the committed tokens (a tree path)")
        if not idx:
            return
        end = n0 + len(idx)
        s = row.holder(idx[-1])
        if s != row.main:  # the path is another leaf's: make it the main id's
            self.llama.seq_rm(row.main, n0, -1)
            self.llama.seq_cp(s, row.main, n0, end)
        self.llama.seq_rm(row.main, end, -1)
        for o in [o for o in row.tips if o != row.main]:
            self.drop(row, o)
        row.pos[n0:] = range(n0, end)
        row.parent[n0:] = range(n0 - 1, end - 1)
        row.tips[row.main] = end - 1
        row.length = row.trunk = end


def _release(llama: _Context, tips: dict[int, int]) -> None:
    """A row that left or that nobody refers to: its cells go, its ids return to the pool."""
    if llama.ctx is None:
        return
    for s in tips:
        llama.seq_rm(s, -1, -1)
        llama.free.append(s)
    tips.clear()


class LlamaCppCache:
    """The caller-owned cache of the contract (``paragen.cache`` semantics, per-row lengths)
    on a llama.cpp context: ``commit``/``truncate`` move lengths only, the cells follow at the
    next forward or ``keep``, so a rejected speculation is forgotten as cheaply as natively.
    Rows hold sequence ids of their own, so a ragged batch needs no mask at all."""

    def __init__(self, rows: _Rows, batch: int, max_length: int) -> None:
        self._ops = rows
        self.max_length = max_length
        self._rows = [rows.new() for _ in range(batch)]

    # lengths
    @property
    def rows(self) -> list[int]:
        return [r.length for r in self._rows]

    @property
    def length(self) -> int:
        return max(self.rows, default=0)

    @property
    def uniform(self) -> bool:
        return len(set(self.rows)) <= 1

    def slots(self, t: int) -> torch.Tensor:
        return torch.tensor(self.rows)[:, None] + torch.arange(t)

    def mask(self, t: int) -> None:
        return None  # each row is its own sequence ids: a chain needs no mask

    def tree_mask(self, trees: torch.Tensor) -> torch.Tensor:
        return trees  # [B, N, N] over the new tokens: every committed slot of the row is visible

    def commit(self, n: int) -> None:
        self.commit_rows([n] * len(self._rows))

    def commit_rows(self, ns: list[int]) -> None:
        if len(ns) != len(self._rows) or any(n < 0 or r.length + n > len(r.pos) for r, n in zip(self._rows, ns)):
            raise IndexError(f"cannot commit {ns} slots at lengths {self.rows}")
        for r, n in zip(self._rows, ns):
            r.length += n

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise IndexError(f"cannot truncate to {n}: length is {self.length}")
        self.truncate_rows([min(r, n) for r in self.rows])

    def truncate_rows(self, ns: list[int]) -> None:
        if len(ns) != len(self._rows) or any(not 0 <= n <= r.length for r, n in zip(self._rows, ns)):
            raise IndexError(f"cannot truncate lengths {self.rows} to {ns}")
        for r, n in zip(self._rows, ns):
            r.length = n

    def keep(self, indices: list[int] | torch.Tensor) -> None:
        if not self.uniform:
            raise ValueError("keep() needs every row at the same length: use keep_rows() for rows of different lengths")
        self.keep_rows([[int(i) for i in indices]] * len(self._rows))

    def keep_rows(self, offsets: list[list[int]]) -> None:
        if len(offsets) != len(self._rows):
            raise IndexError(f"cannot keep {offsets} at lengths {self.rows}")
        for r, off in zip(self._rows, offsets):
            self._ops.keep(r, list(off))

    def select(self, rows: list[int]) -> None:
        for i in set(range(len(self._rows))) - set(rows):
            self._rows[i].release()  # free their ids now, not when the garbage collector gets to them
        self._rows = [self._rows[i] for i in rows]

    def extend(self, other: LlamaCppCache) -> None:
        if other._ops is not self._ops:
            raise ValueError("extend(): the caches belong to different llama.cpp contexts")
        self._rows += other._rows
        other._rows = []
        self.max_length = max(self.max_length, other.max_length)


# ---------------------------------------------------------------- one call: mask -> tree -> sequence ids


NOT_A_TREE = ("the llamacpp backend runs calls whose attention is a tree of consecutive positions (causal chains, "
              "token trees, lookahead windows): {what}; bidirectional or windowed calls (diffusion) run on backends "
              "native and hf")


def _parents(row: _Row, new: torch.Tensor | None, seen: torch.Tensor | None, pos: list[int]) -> list[int]:
    """Each new token's parent slot (committed slots 0..L-1, new tokens L..L+T-1; -1: none),
    read from the call's mask: ``new`` [T, T] among the new tokens (None: causal), ``seen``
    [T, L] over the committed slots (None: all). A clear error unless the call is a tree of
    consecutive positions on the row's cells (the only attention sequence ids express)."""
    L, T = row.length, len(pos)
    if seen is None and row.trunk < L:
        raise UnsupportedOptionError(NOT_A_TREE.format(what="every committed slot visible, but they are not one sequence"))
    if new is None:  # a causal chain after the committed tokens: the common step, kept cheap
        if pos != list(range(L, L + T)):
            raise InvalidInputError(f"the llamacpp backend feeds a chain at positions {L}..{L + T - 1} after {L} "
                                    f"committed tokens, not {pos[0]}..{pos[-1]} (llama.cpp keeps positions consecutive)")
        return list(range(L - 1, L + T - 1))
    p = torch.tensor(pos)
    eye = torch.eye(T, dtype=torch.bool)
    others = new & ~eye
    if not bool(new.diagonal().all()) or bool(others.triu().any()):
        raise UnsupportedOptionError(NOT_A_TREE.format(what="a token must see itself and only tokens fed before it"))
    top, arg = torch.where(others, p[None, :], -1).max(1)  # each token's deepest visible new token: its parent
    child = top >= 0
    ok = (top[child] == p[child] - 1).all() and (new[child] == (new[arg[child]] | eye[child])).all()
    if seen is not None:
        ok = ok and (seen[child] == seen[arg[child]]).all()
    if not ok:
        raise UnsupportedOptionError(NOT_A_TREE.format(what="a token must see its parent's tokens and itself"))
    parents = [L + int(a) if c else -2 for a, c in zip(arg.tolist(), child.tolist())]
    here = torch.tensor(row.pos, dtype=torch.long) if seen is not None else None
    for i in (i for i in range(T) if parents[i] == -2):  # roots: their parent is a committed slot
        if seen is None:
            anchor = L - 1  # the committed sequence's newest slot
        else:
            at = (seen[i] & (here == pos[i] - 1)).nonzero().flatten().tolist()
            anchor = at[0] if len(at) == 1 else (-1 if pos[i] == 0 and not at else -3)
            if anchor == -3 or not torch.equal(seen[i], row.chain(anchor, L)):
                raise UnsupportedOptionError(NOT_A_TREE.format(what=f"token {i} sees committed slots that are not one "
                                                                    "chain ending at its position - 1"))
        if pos[i] != (row.pos[anchor] + 1 if anchor >= 0 else 0):
            raise UnsupportedOptionError(NOT_A_TREE.format(what=f"token {i} at position {pos[i]} does not follow "
                                                                "the committed slot it sees last"))
        parents[i] = anchor
    return parents


@dataclass
class _Plan:
    """One row's share of a call: each new token's parent slot, and for each leaf the sequence
    id it continues (reused: its chain ends at the leaf's anchor) or None (a free id joins)."""

    parents: list[int]
    leaves: list[tuple[int, int, int | None]]  # (new token, anchor slot, reused id or None)

    @property
    def fresh(self) -> int:
        return sum(s is None for _, _, s in self.leaves)


def _plan(row: _Row, parents: list[int]) -> _Plan:
    L, T = row.length, len(parents)
    inner = {p - L for p in parents if p >= L}
    claimed: set[int] = set()
    leaves = []
    for leaf in (i for i in range(T) if i not in inner):
        a = parents[leaf]
        while a >= L:
            a = parents[a - L]
        s = next((s for s, t in row.tips.items() if t == a and s not in claimed), None)
        if s is not None:
            claimed.add(s)
        leaves.append((leaf, a, s))
    return _Plan(parents, leaves)


def _apply(llama: _Context, row: _Row, plan: _Plan) -> list[list[int]]:
    """Give every leaf its sequence id (a free one joins its anchor's chain: seq_cp); each new
    token's ids [T][k]: the leaves' below it, the first its query id."""
    L = row.length
    seqs: list[list[int]] = [[] for _ in plan.parents]
    tips = {}
    for leaf, a, s in plan.leaves:
        if s is None:
            s = llama.free.pop()
            if a >= 0:
                llama.seq_cp(row.holder(a), s, -1, row.pos[a] + 1)
        tips[s] = L + leaf
        i = leaf
        while i >= 0:
            seqs[i].append(s)
            i = plan.parents[i] - L
    row.tips.update(tips)
    return seqs


def _append(row: _Row, pos: list[int], parents: list[int]) -> None:
    row.pos += pos
    row.parent += parents
    while row.trunk < len(row.pos) and row.pos[row.trunk] == row.trunk and row.parent[row.trunk] == row.trunk - 1:
        row.trunk += 1


# ---------------------------------------------------------------- the model


class LlamaCppModel(Model):
    """A GGUF model on llama.cpp behind the model contract (see the module docstring).

    Every cache of one model shares its context's KV memory (``n_ctx`` cells) and its
    ``n_seq_max`` sequence ids; a cache's rows return theirs when it drops them."""

    device = torch.device("cpu")

    def __init__(self, llama: _Context, info: ModelInfo, weights: str, path: Path, threads: int,
                 keep_alive: Any = None) -> None:
        self.llama, self.info, self.weights, self.path, self.threads = llama, info, weights, path, threads
        self._rows = _Rows(llama)
        self._keep_alive = keep_alive  # the temporary directory of a converted model's GGUF
        lib = llama.lib
        self.n_ctx = lib.llama_n_ctx(llama.ctx)
        self.hidden_size = lib.llama_model_n_embd(llama.model)
        cap = self.n_ctx
        # One batch, filled in place through numpy views of its arrays (a Python loop over
        # ctypes fields would cost more than a small model's step).
        self._batch = lib.llama_batch_init(cap, 0, llama.n_seq_max)
        b = self._batch
        self._tok, self._pos, self._nseq, self._out = (np.ctypeslib.as_array(a, shape=(cap,))
                                                        for a in (b.token, b.pos, b.n_seq_id, b.logits))
        self._seq = [np.ctypeslib.as_array(b.seq_id[i], shape=(llama.n_seq_max,)) for i in range(cap)]
        self._hidden_checked = False
        self._heads: tuple[torch.Tensor, torch.Tensor] | None = None
        weakref.finalize(self, lib.llama_batch_free, b)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # logits and hidden states come back as float32

    @property
    def weight_format(self) -> str | None:
        return LABELS.get(self.weights, f"{self.weights} GGUF (lossy)")

    def new_cache(self, batch: int = 1, max_length: int | None = None) -> LlamaCppCache:
        return LlamaCppCache(self._rows, batch, max_length or self.info.max_length)

    def forward(self, tokens, positions, cache=None, mask=None, return_hidden=False):
        B, T = tokens.shape
        if cache is None:  # a call without a cache: a fresh sequence per row, dropped after
            cache = self.new_cache(batch=B)
        if len(cache._rows) != B:
            raise InvalidInputError(f"a batch of {B} rows on a cache of {len(cache._rows)}")
        if B * T > self.n_ctx:
            raise InvalidInputError(f"one call of {B * T} tokens exceeds the llamacpp context of {self.n_ctx} cells")
        if B * T and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.info.vocab_size:
            raise InvalidInputError(f"token ids must lie in [0, {self.info.vocab_size}), the model's vocabulary")
        new, seen = self._split_mask(mask, B, T, cache)
        pos = positions.tolist()
        plans = []
        for b, row in enumerate(cache._rows):  # validate every row before any sequence operation
            self._rows.prune(row)
            plans.append(_plan(row, _parents(row, new[b], seen[b], pos[b])))
        fresh = sum(p.fresh for p in plans)
        if fresh > len(self.llama.free):
            leaves = sum(len(p.leaves) for p in plans)
            raise TreeTooLargeError(
                f"this call's trees have {leaves} leaves in {B} row(s), and llama.cpp holds one sequence id per leaf: "
                f"{fresh} more needed, {len(self.llama.free)} free of n_seq_max {self.llama.n_seq_max} (at most "
                f"{MAX_SEQ}): a smaller tree, fewer rows, or load with a larger n_seq_max")
        before = [dict(row.tips) for row in cache._rows]
        n = B * T
        self._tok[:n] = tokens.reshape(-1).numpy()
        self._pos[:n] = positions.reshape(-1).numpy()
        self._out[:n] = 1
        i = 0
        for row, plan in zip(cache._rows, plans):
            for ids in _apply(self.llama, row, plan):
                self._nseq[i] = len(ids)
                self._seq[i][: len(ids)] = ids
                i += 1
        self._batch.n_tokens = n
        try:
            self._decode()
        except Exception:  # the call never happened: the ids it took go back, the mirror as it was
            for row, tips in zip(cache._rows, before):
                for s in set(row.tips) - set(tips):
                    self.llama.seq_rm(s, -1, -1)
                    self.llama.free.append(s)
                row.tips.clear()
                row.tips.update(tips)
            raise
        for b, (row, plan) in enumerate(zip(cache._rows, plans)):
            _append(row, pos[b], plan.parents)
        lib, ctx = self.llama.lib, self.llama.ctx
        V = self.info.vocab_size
        logits = torch.from_numpy(np.ctypeslib.as_array(lib.llama_get_logits(ctx), shape=(n, V)).copy()).view(B, T, V)
        if not return_hidden:
            return logits
        states = torch.from_numpy(np.ctypeslib.as_array(lib.llama_get_embeddings(ctx), shape=(n, self.hidden_size))
                                  .copy()).view(B, T, self.hidden_size)
        if not self._hidden_checked:
            self._check_hidden(logits, states)
        return logits, states

    def _split_mask(self, mask, B: int, T: int, cache: LlamaCppCache) -> tuple[list, list]:
        """Per row: the mask among the new tokens [T, T] (None: causal) and over the committed
        slots [T, L] (None: all visible), from a contract mask ``[B or 1, T, T or L + T]``."""
        if mask is None:
            return [None] * B, [None] * B
        m = mask.to(torch.bool).cpu()
        m = m[None] if m.dim() == 2 else m
        if m.dim() != 3 or m.shape[1] != T or m.shape[0] not in (1, B):
            raise InvalidInputError(f"mask of shape {tuple(mask.shape)} for {B} rows of {T} tokens")
        m = m.expand(B, -1, -1)
        S = m.shape[-1]
        if S == T:
            return list(m), [None] * B
        L = cache.length
        if not cache.uniform or S != L + T:
            raise InvalidInputError(f"mask last dim must be {T} or {L + T} (rows at one length), got {S}")
        return list(m[:, :, L:]), list(m[:, :, :L])

    def _decode(self) -> None:
        rc = self.llama.lib.llama_decode(self.llama.ctx, self._batch)
        if rc == 1:
            raise InvalidInputError(f"llama.cpp's KV memory is full ({self.n_ctx} cells shared by every cache of this "
                                    "model): fewer rows or shorter sequences, or load with a larger n_ctx (load_llamacpp)")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} (see llama.cpp's message above)")

    def _check_hidden(self, logits: torch.Tensor, states: torch.Tensor) -> None:
        """Heads read hidden states through the model's own projection: refuse them unless
        llama.cpp's embeddings give this call's logits through it (measured, once)."""
        proj = self.head_weights()[1]
        again = states.reshape(-1, states.shape[-1]) @ proj.T
        scale = float(logits.abs().max()) or 1.0
        err = float((again - logits.reshape(again.shape)).abs().max()) / scale
        tolerance = {"f32": 1e-4, "f16": 1e-2}.get(self.weights, 5e-2)
        if err > tolerance:
            raise UnsupportedOptionError(
                f"llama.cpp's hidden states for this {self.path.name} are not what its output projection reads "
                f"(relative error {err:.2g} > {tolerance:g}): prediction heads and feature drafters run on backends "
                "native and hf")
        self._hidden_checked = True

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embedding [V, H], output projection [V, H]) as the GGUF holds them, dequantized
        to float32 (read once: heads bind to these tensors)."""
        if self._heads is None:
            import gguf

            reader = gguf.GGUFReader(str(self.path))
            tensors = {t.name: t for t in reader.tensors}

            def read(name: str) -> torch.Tensor:
                t = tensors[name]
                data = gguf.quants.dequantize(t.data, t.tensor_type)
                return torch.from_numpy(np.array(data, dtype=np.float32)).reshape(-1, self.hidden_size)  # a writable copy

            embed = read("token_embd.weight")
            self._heads = (embed, read("output.weight") if "output.weight" in tensors else embed)
        return self._heads


# ---------------------------------------------------------------- loading


_SINK: list = []  # the C callback llama.cpp's logger calls: kept alive here as long as the process


def _errors_only(lib) -> None:
    """llama.cpp's log sink is one per process: llama-cpp-python's prints warnings and info
    (its level table predates ggml's current order), so loading a model would print every
    tensor. Errors only (GGML_LOG_LEVEL_ERROR = 4): a refused batch still says why."""
    if _SINK:
        return
    import sys

    def sink(level: int, text: bytes, user_data) -> None:
        if level == 4:
            print(text.decode("utf-8", "replace"), end="", file=sys.stderr, flush=True)

    _SINK.append(lib.llama_log_callback(sink))
    lib.llama_log_set(_SINK[0], ctypes.c_void_p(0))


def _gguf_facts(path: Path) -> tuple[str, str]:
    """(architecture, weight type) of a GGUF file, read from its header; clear errors for a bad file."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file to the user
        raise ModelLoadError(f"{path} is not a readable GGUF file ({e})") from e
    named = reader.fields.get("general.architecture")
    arch = named.contents() if named is not None else "unknown"
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{path.name}: GGUF architecture '{arch}' is not supported by the llamacpp backend "
                             f"(it runs {', '.join(ARCHITECTURES)})")
    kinds = {t.tensor_type.name.lower() for t in reader.tensors if len(t.shape) == 2}
    return arch, (kinds.pop() if len(kinds) == 1 else "mixed")


def _weights(dtype: Any) -> str:
    if dtype is None or dtype is torch.float32:
        return "f32"
    if dtype is torch.float16:
        return "f16"
    if isinstance(dtype, str) and dtype in WEIGHTS:
        return WEIGHTS[dtype]
    raise InvalidInputError(f"the llamacpp backend computes in GGUF weight types: choose dtype float32 (f32), "
                            f"fp16-weights (f16) or int8-weights (q8_0, lossy), not {dtype}")


def load_llamacpp(name_or_path: str | Path, dtype: Any = None, threads: int | None = None, n_seq_max: int = MAX_SEQ,
                  n_ctx: int | None = None, max_length: int | None = None) -> LlamaCppModel:
    """A GGUF file, or a built-in model / model directory converted on the fly with
    ``paragen.models.gguf.write_gguf`` (``dtype``: f32 by default, f16 or q8_0; see ``WEIGHTS``),
    on llama.cpp with ``threads`` CPU threads (default: torch's). ``n_seq_max`` sequence ids
    (<= 256) for every row and tree leaf alive at once; ``n_ctx`` KV cells for all of them
    (default: two rows of ``max_length`` plus 512: cells are taken as tokens come, so many short
    rows fit too); ``max_length``: tokens per row (default: the model's context, at most 4096;
    at most the model's context)."""
    lib = _llama()
    from paragen.tokenizer import Tokenizer, has_tokenizer

    if not 1 <= n_seq_max <= MAX_SEQ:
        raise InvalidInputError(f"n_seq_max must be between 1 and {MAX_SEQ} (llama.cpp's LLAMA_MAX_SEQ), got {n_seq_max}")
    path, keep_alive = Path(name_or_path), None
    if path.is_file():
        if dtype is not None and _weights(dtype) != "f32":
            raise InvalidInputError(f"{path.name} is a GGUF file: it computes in its own weight type, drop dtype")
        arch, weights = _gguf_facts(path)
        tokenizer = Tokenizer.from_dir(path.parent) if has_tokenizer(path.parent) else None
        name = path.stem
    else:
        from paragen.models.gguf import write_gguf
        from paragen.models.io import load_dir, resolve

        weights = _weights(dtype)
        source = load_dir(resolve(name_or_path))
        if source.info.attention != "causal":
            raise UnsupportedOptionError(f"{Path(str(name_or_path)).name} is a {source.info.attention} (diffusion) model: "
                                         "the llamacpp backend runs causal models; run it on backend native")
        keep_alive = tempfile.TemporaryDirectory(prefix="paragen-gguf-")
        path = write_gguf(source, Path(keep_alive.name) / f"{source.name}-{weights}.gguf", weights)
        tokenizer, name = source.tokenizer, source.name
    lib.llama_backend_init()
    threads = threads or torch.get_num_threads()
    _errors_only(lib)

    mp = lib.llama_model_default_params()
    if weights != "f32" and weights != "f16":
        # No AMX / repacked weight buffers for quantized types: llama-cpp-python 0.3.36's AMX
        # q8_0 kernel segfaults (ggml_backend_amx_mul_mat) on CPUs with AMX, such as this project's.
        mp.use_extra_bufts = False
    model = lib.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise ModelLoadError(f"llama.cpp could not load {path}")
    trained = lib.llama_model_n_ctx_train(model)
    length = min(max_length or min(trained, DEFAULT_LENGTH), trained)
    p = lib.llama_context_default_params()
    p.n_ctx = n_ctx or 2 * length + 512  # by default: two full rows, plus room for their pending trees
    p.n_batch, p.n_ubatch = p.n_ctx, min(512, p.n_ctx)
    p.n_seq_max, p.kv_unified = n_seq_max, True  # one KV pool: a tree's cells carry many ids
    p.n_threads = p.n_threads_batch = threads
    p.embeddings, p.pooling_type = True, 0  # per-token final-norm states (LLAMA_POOLING_TYPE_NONE)
    p.flash_attn_type = 0  # LLAMA_FLASH_ATTN_TYPE_DISABLED, as llama-cpp-python's Llama (the bench's peers) runs
    if weights == "f32":  # exact: float32 keys/values (llama.cpp's default is f16, as for the f16 and q8_0 peers)
        p.type_k = p.type_v = 0  # GGML_TYPE_F32
    ctx = lib.llama_init_from_model(model, p)
    if not ctx:
        lib.llama_model_free(model)
        raise ModelLoadError(f"llama.cpp could not create a context for {path} (n_ctx {p.n_ctx}, n_seq_max {p.n_seq_max})")
    vocab = lib.llama_model_get_vocab(model)
    eos = lib.llama_vocab_eos(vocab)
    info = ModelInfo(vocab_size=lib.llama_vocab_n_tokens(vocab), max_length=length,
                     eos_ids=(eos,) if eos >= 0 else (), mask_id=None, attention="causal")
    out = LlamaCppModel(_Context(lib, model, ctx), info, weights, path, threads, keep_alive)
    out.tokenizer, out.name = tokenizer, name
    return out
