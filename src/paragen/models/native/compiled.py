"""The compiled decode step: ``torch.compile`` of the packed path (``packed.py``) on a few
padded call sizes (gpt-fast's approach, with vLLM's padding to a few sizes), so that a call's
graph depends on a few sizes only.

- **Tokens per row** are padded up to the next of ``TOKEN_BUCKETS`` (1, 2, 4, ... 64): a call
  of 5 tokens runs the 8-token graph. A pad token sits after the row's real ones, writes its
  key/value into a slot past them (uncommitted: the next write overwrites it), sees only
  itself, is seen by no real token (the contract's masks hide every slot past a row's own
  tokens) and its logits are dropped: pads are inert.
- **Rows** (the batch) are a dynamic size: one graph serves every batch of two rows or more
  (and one the single row, which torch specialises).
- **Slots attended** are a dynamic size too: a call reads the cache's first slots up to the
  next multiple of ``SLOT_STEP`` past its own, under a mask (not the whole preallocated cache,
  which at 128 tokens of context held 2-3x the slots the eager step reads), so one graph
  serves every cache size and context length. Caches leave 64 slots of room for pads
  (``cache_length``).

So a whole bench run compiles a bounded number of graphs: per bucket used at most four (one
row or several; the causal mask, built in the graph, or an explicit one: trees, ragged rows);
each bucket is its own compiled function (``_own_code``), holding at most torch's 8 graphs.
``warm_up`` compiles them before the first timed or served call; ``HotGraphs`` decides, under
``compile="auto"``, which are worth compiling. Calls after an empty cache (prefill) and
longer calls stay eager; so do bidirectional and sliding-window models. Rows of different
lengths write at their own slots (a scatter), in the same graph. The EAGLE drafter's calls
run the same way (``compile_drafter``). The eager path is the reference it is tested against
(tests/test_compiled.py).
"""

from __future__ import annotations

import time
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
# A call attends over the cache's slots up to the next multiple of this past its own.
SLOT_STEP = 64


def token_bucket(t: int) -> int | None:
    """The compiled call size a call of ``t`` tokens per row runs as, or None above the largest."""
    return next((b for b in TOKEN_BUCKETS if b >= t), None)


def cache_length(length: int) -> int:
    """The slots a compiled model's cache holds for ``length`` positions: powers of two from
    256 (few sizes, so caches are reused alike), and 64 more for a padded call's pads."""
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


def _causal(slots: torch.Tensor, ks: list[torch.Tensor]) -> torch.Tensor:
    """The causal mask in the graph: query t of row b sees the slots up to its own."""
    keys = torch.arange(ks[0].shape[2], device=slots.device)
    return (keys[None, None, :] <= slots[:, :, None])[:, None]


def _step(model, tokens, positions, slots, mask, ks, vs) -> tuple[torch.Tensor, torch.Tensor]:
    """The traced step, bound to the model (``compile_steps``): (logits, hidden) of the padded call."""
    mask = _causal(slots, ks) if mask is None else mask
    n = len(model.packed.layers)
    cos, sin = rope_tables(model.inv_freq, positions, model.dtype)
    hidden = packed_hidden_states(model.packed, model.config, model.model, tokens, cos, sin,
                                  _SlotWriter(ks, vs, slots), [mask] * n, [False] * n)
    return model.packed.lm_head(hidden), hidden


def _drafter_step(heads, features, tokens, positions, slots, mask, ks, vs) -> torch.Tensor:
    """The EAGLE drafter's traced step (``paragen.heads.modules.Eagle.forward`` on a padded call)."""
    mask = _causal(slots, ks) if mask is None else mask
    x = heads.fc(torch.cat([features, heads.embed[tokens]], dim=-1))
    cos, sin = rope_tables(heads.inv_freq, positions, x.dtype)
    return heads.layer(x, cos, sin, 0, _SlotWriter(ks, vs, slots), mask, False)


def _own_code(fn: Callable, name: str) -> Callable:
    """``fn`` as a function of its own code object named ``name``: torch.compile keeps its graphs
    per code object, at most ``recompile_limit`` (8) each, so one code object per call-size
    bucket gives each bucket its own graphs without changing the process-wide limit."""
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def graph_key(tokens: torch.Tensor, mask: torch.Tensor | None) -> tuple[int, bool, bool]:
    """Which of the compiled graphs a call runs: (bucket, several rows, explicit mask)."""
    return token_bucket(tokens.shape[1]), tokens.shape[0] > 1, mask is not None


class HotGraphs:
    """``compile="auto"``: a graph is compiled once the eager calls it would have served have
    cost ``compile_seconds / GAIN``. That is the rent-or-buy rule: a short generation never pays
    for a compile, and a long one pays at most about twice what the better of always and never
    compiling would have cost, with no need to know in advance how long a generation will be.

    ``compile_seconds`` starts at ``COMPILE_SECONDS`` and then follows the measured compiles of
    this process; a compile found in torch's on-disk caches is cheap, and the threshold drops
    with it. Graphs compiled by ``warm_up`` are in use at once."""

    # Measured on a 2-core CPU (BENCHMARKS, "The compiled step in shape buckets"): compiled
    # `ar` is 1.08-1.10x eager, so a compiled call saves ~8%; a graph compiles in ~6 s cold.
    # So a graph compiles after ~75 s of its calls: only what a long run or a server keeps hot.
    GAIN = 0.08
    COMPILE_SECONDS = 6.0

    @classmethod
    def on(cls, auto: bool, device: torch.device) -> HotGraphs | None:
        """The account of a step compiled with ``auto``, or None (every graph at its first call):
        on CUDA, where the graphs replay as CUDA graphs and timing a call would need a device
        sync, and without ``auto``."""
        return cls() if auto and device.type == "cpu" else None

    def __init__(self) -> None:
        self.compile_seconds = self.COMPILE_SECONDS
        self.eager_seconds: dict[tuple[int, bool, bool], float] = {}
        self.ready: set[tuple[int, bool, bool]] = set()

    def wants(self, key: tuple[int, bool, bool]) -> bool:
        """Whether this call should run compiled (compiling its graph if it is the first)."""
        return key in self.ready or self.eager_seconds.get(key, 0.0) * self.GAIN >= self.compile_seconds

    def ran_eager(self, key: tuple[int, bool, bool], seconds: float) -> None:
        self.eager_seconds[key] = self.eager_seconds.get(key, 0.0) + seconds

    def ran_compiled(self, key: tuple[int, bool, bool], seconds: float) -> None:
        if key not in self.ready:  # the first call compiled the graph: its time is the compile's
            self.ready.add(key)
            self.compile_seconds = seconds


def compile_steps(owner: nn.Module, step: Callable = _step, name: str = "paragen_step") -> dict[int, Callable]:
    """One compiled ``step`` per bucket, each a method of ``owner``: the model's decode step
    (``NativeModel.compile_decode``) or the EAGLE drafter's (``compile_drafter``)."""
    # On CUDA each graph is also captured as a CUDA graph (vLLM's and gpt-fast's way to skip
    # the per-kernel launch cost); torch replays it where its inputs allow, else runs it as is.
    mode = "reduce-overhead" if next(owner.parameters()).device.type == "cuda" else None
    return {t: torch.compile(types.MethodType(_own_code(step, f"{name}_{t}"), owner), dynamic=False, mode=mode)
            for t in TOKEN_BUCKETS}


def compile_drafter(heads: nn.Module) -> dict[int, Callable]:
    """The EAGLE drafter's compiled steps (``Eagle.compile_drafter``)."""
    return compile_steps(heads, _drafter_step, "paragen_eagle")


def runs_compiled(model: nn.Module, tokens: torch.Tensor, cache: KVCache) -> bool:
    """Whether a call of ``tokens`` on ``cache`` runs the compiled step (see the module docstring)."""
    return model.config.attention == "causal" and not model.sliding and fits(tokens, cache)


def fits(tokens: torch.Tensor, cache: KVCache) -> bool:
    """Whether a call of ``tokens`` on ``cache`` has a bucket: after a prefill, its pads within the cache."""
    n = token_bucket(tokens.shape[1])
    return cache.length > 0 and n is not None and cache.length + n <= cache.max_length


def padded_call(tokens, positions, cache: KVCache, mask) -> tuple[int, tuple[torch.Tensor | list[torch.Tensor] | None, ...]]:
    """A call of T tokens per row as a compiled step's inputs: (bucket n, (tokens, positions,
    slots, mask, keys, values)), padded to n tokens; the step writes each row's slots
    ``[rows[b], rows[b] + T)`` like ``KVCache.write``, and its pads' slots after them."""
    B, T = tokens.shape
    n, dev = token_bucket(T), tokens.device
    slots = cache.slots(T)
    if positions is slots:  # callers may pass the cache's own slots: one graph whether or not they do
        positions = positions.clone()
    if n > T:  # pads after each row's tokens: positions and slots continue past them
        more = torch.arange(1, n - T + 1, device=dev)
        tokens = F.pad(tokens, (0, n - T))
        positions = torch.cat([positions, positions[:, -1:] + more], 1)
        slots = torch.cat([slots, slots[:, -1:] + more], 1)
    full = None  # causal: the graph builds it from the slots (a query sees its row's slots up to its own)
    used = min(cache.max_length, -(-(cache.length + n) // SLOT_STEP) * SLOT_STEP)  # the slots attended
    ks, vs = [k[:, :, :used] for k in cache.k], [v[:, :, :used] for v in cache.v]  # views: writes reach the cache
    if mask is not None:  # the contract mask over [length + T] keys, widened to the slots attended; a pad sees itself only
        past = cache.length
        visible = expand_mask(mask, past, T, True, dev)[:, 0]  # [B|1, T, past + T]
        full = torch.arange(used, device=dev)[None, None, :] == slots[:, :, None]
        full[:, :T, : past + T] = visible
        full = full[:, None]
    # One graph for every number of slots, and for every batch of two rows or more (torch
    # specialises a single row).
    for x in (*ks, *vs):
        torch._dynamo.mark_dynamic(x, 2)
    if full is not None:
        torch._dynamo.mark_dynamic(full, 3)
    if B > 1:
        for x in (tokens, positions, slots, *([full] if full is not None else []), *ks, *vs):
            torch._dynamo.mark_dynamic(x, 0)
    return n, (tokens, positions, slots, full, ks, vs)


def compiled_forward(model: nn.Module, tokens, positions, cache: KVCache, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled step of a call of T tokens per row, padded to its bucket (``padded_call``):
    (logits, hidden) [B, T, ...]."""
    n, inputs = padded_call(tokens, positions, cache, mask)
    T = tokens.shape[1]
    logits, hidden = model.compiled[n](*inputs)
    return logits[:, :T], hidden[:, :T]


def timed_step(hot: HotGraphs | None, key: tuple[int, bool, bool], compiled: Callable[[], tuple],
               eager: Callable[[], tuple]) -> tuple:
    """A call the compiled step can run: compiled, or under ``compile="auto"`` (``hot``) eager
    until its graph has earned its compile, each call timed for that account."""
    if hot is None:
        return compiled()
    use = hot.wants(key)
    start = time.perf_counter()
    out = compiled() if use else eager()
    (hot.ran_compiled if use else hot.ran_eager)(key, time.perf_counter() - start)
    return out


def compiled_drafter_forward(heads: nn.Module, features, tokens, positions, cache: KVCache, mask) -> torch.Tensor:
    """The EAGLE drafter's compiled step on a call padded to its bucket (``padded_call``; the
    pads' features are zeros): predicted features [B, T, H]."""
    n, inputs = padded_call(tokens, positions, cache, mask)
    T = tokens.shape[1]
    return heads.compiled[n](F.pad(features, (0, 0, 0, n - T)), *inputs)[:, :T]


def warm_up(tokens: int, rows: int, call: Callable[[int, int, bool], None], hot: HotGraphs | None) -> int:
    """Compile now the graphs a decode of up to ``tokens`` per call on ``rows`` rows can run:
    every bucket up to ``tokens``'s, for one row and (rows > 1) for several, causal and under an
    explicit mask (trees, ragged rows), so that no compile lands inside a timed or served call.
    ``call(batch, n, masked)`` runs one dummy call; returns how many ran (each compiled a graph
    or found it in torch's caches)."""
    top = token_bucket(min(tokens, TOKEN_BUCKETS[-1]))
    calls = 0
    for n in (b for b in TOKEN_BUCKETS if b <= top):
        for batch in sorted({1, min(rows, 2)}):  # 2 rows: the graph every batch of two or more runs
            for masked in (False, True):
                if hot is not None:  # in use from now on: this call compiles it
                    hot.ready.add((n, batch > 1, masked))
                with torch.inference_mode():  # as generate runs: a graph's guards include grad mode
                    call(batch, n, masked)
                calls += 1
    return calls


def dummy_call(cache: KVCache, n: int, masked: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(tokens, positions, mask) of a warm-up call of ``n`` tokens per row on a fresh ``cache``,
    after one committed slot (the compiled step runs after a prefill)."""
    cache.commit(1)
    batch = cache.k[0].shape[0]
    ids = torch.zeros(batch, n, dtype=torch.long, device=cache.device)
    mask = torch.ones(batch, n, 1 + n, dtype=torch.bool, device=cache.device).tril(1) if masked else None
    return ids, cache.slots(n), mask
