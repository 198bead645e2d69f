"""Measured call costs: what one model call feeding n tokens per row takes here, at a batch size.

A draft-and-verify step costs one target call feeding 1 + k tokens per row, plus whatever
drafts (k draft calls, one heads call); which strategy is fastest depends on these
seconds on this machine, not on tokens per call alone (on a 2-core CPU a 32-token call
costs several one-token calls; on a GPU about one). ``call_costs`` measures them once per
(model, device, dtype, threads, batch bucket) in a fraction of a second, and keeps them
in memory and on disk (``$PARAGEN_CACHE/costs.json``, default ``~/.cache/paragen``), so
``auto``, the bench and the server read the same numbers; ``refresh=True`` measures again.

A measured call feeds random tokens after a 64-token context, uncommitted (every
repetition writes the same slots); the cost is the fastest of a few repetitions after a
warm-up call, the one least disturbed by other work on the machine.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from paragen.models import device_of
from paragen.models.base import Model

BUCKETS = (1, 2, 4, 8, 16, 32)  # tokens per row of a measured call
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTEXT = 64  # committed tokens before a measured call
REPEATS = 3
VERSION = 1  # of the file's layout: another version's entries are measured again


@dataclass(frozen=True)
class CallCosts:
    """Seconds of one call feeding n tokens per row (n in ``BUCKETS``) at ``batch`` rows,
    for the target and, where there is one, the draft; ``heads``: one heads call."""

    key: str
    batch: int
    target: dict[int, float]
    draft: dict[int, float] | None = None
    heads: float | None = None
    seconds: float = 0.0  # what measuring took

    def target_call(self, n: int) -> float:
        return interpolate(self.target, n)

    def draft_call(self, n: int) -> float:
        return interpolate(self.draft, n) if self.draft else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def interpolate(costs: dict[int, float], n: int) -> float:
    """A call of n tokens: linear between the measured buckets, and beyond the largest along
    the slope of the last two (a call's time grows about linearly once compute-bound)."""
    ns = sorted(costs)
    if n <= ns[0]:
        return costs[ns[0]]
    for a, b in zip(ns, ns[1:]):
        if n <= b:
            return costs[a] + (costs[b] - costs[a]) * (n - a) / (b - a)
    a, b = ns[-2], ns[-1]
    return costs[b] + (costs[b] - costs[a]) * (n - b) / (b - a)


def batch_bucket(batch: int) -> int:
    """The measured batch size a batch of ``batch`` rows is costed at (the next bucket up)."""
    return next((b for b in BATCH_BUCKETS if b >= batch), BATCH_BUCKETS[-1])


def cache_dir() -> Path:
    return Path(os.environ.get("PARAGEN_CACHE") or Path.home() / ".cache" / "paragen")


def model_key(model: Model) -> str:
    """What a model's call cost depends on: its identity and shape, device, dtype, threads."""
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "module", None)
    params = sum(p.numel() for p in module.parameters()) if isinstance(module, torch.nn.Module) else 0
    info = model.info
    fmt = getattr(model, "weight_format", None) or str(model.dtype).removeprefix("torch.")
    step = "compiled" if getattr(model, "compiled", None) else "eager"
    threads = getattr(model, "threads", None) or torch.get_num_threads()  # a backend with threads of its own says so
    return (f"{type(model).__name__}:{getattr(model, 'name', 'model')}:v{info.vocab_size}:p{params}:{fmt}:{step}:"
            f"{device_of(model)}:t{threads}")


def call_costs(target: Model, batch: int, draft: Model | None = None, heads: Any = None,
               refresh: bool = False, path: Path | None = None) -> CallCosts:
    """The call costs at ``batch`` rows (costed at ``batch_bucket(batch)``): from memory, else
    from the file, else measured now and saved. A corrupt file is ignored with a warning."""
    b = batch_bucket(batch)
    key = "|".join([model_key(target), model_key(draft) if draft is not None else "-",
                    f"heads:{heads.kind}:{heads.num_heads}" if heads is not None else "-", f"b{b}"])
    if not refresh and key in _MEMORY:
        return _MEMORY[key]
    path = path or cache_dir() / "costs.json"
    stored = {} if refresh else _read(path)
    if key in stored:
        costs = _parse(key, stored[key])
        if costs is not None:
            _MEMORY[key] = costs
            return costs
    costs = measure(target, b, draft, heads, key)
    _MEMORY[key] = costs
    _write(path, key, costs)
    return costs


_MEMORY: dict[str, CallCosts] = {}  # this process's measurements (the file is shared between processes)


@torch.inference_mode()
def measure(target: Model, batch: int, draft: Model | None = None, heads: Any = None, key: str = "") -> CallCosts:
    """Time the calls now (see the module docstring)."""
    t0 = time.perf_counter()
    costs = CallCosts(key=key, batch=batch, target=_model_costs(target, batch),
                      draft=_model_costs(draft, batch) if draft is not None else None,
                      heads=_heads_cost(heads, target, batch) if heads is not None else None)
    return CallCosts(**{**costs.to_dict(), "seconds": time.perf_counter() - t0})


def _model_costs(model: Model, batch: int) -> dict[int, float]:
    device = device_of(model)
    g = torch.Generator().manual_seed(0)
    vocab = model.info.vocab_size
    cache = model.new_cache(batch=batch, max_length=CONTEXT + max(BUCKETS))
    context = torch.randint(vocab, (batch, CONTEXT), generator=g).to(device)
    model(context, cache.slots(CONTEXT).to(device), cache=cache, mask=cache.mask(CONTEXT))
    cache.commit(CONTEXT)
    out = {}
    for n in BUCKETS:
        tokens = torch.randint(vocab, (batch, n), generator=g).to(device)
        slots, mask = cache.slots(n).to(device), cache.mask(n)
        out[n] = _fastest(lambda x=tokens, pos=slots, m=mask: model(x, pos, cache=cache, mask=m), device)
    return out


def _heads_cost(heads: Any, target: Model, batch: int) -> float | None:
    """One heads call on a batch of states, for the heads read from a state alone (Medusa's
    and blockwise's); None for the others (their cost is learnt while they run)."""
    if heads.kind not in ("medusa", "blockwise"):
        return None
    hidden = torch.randn(batch, heads.proj.shape[1], generator=torch.Generator().manual_seed(0))
    hidden = hidden.to(device=heads.proj.device, dtype=heads.proj.dtype)
    return _fastest(lambda: heads(hidden), heads.proj.device)


def _fastest(call, device: torch.device) -> float:
    call()  # warm-up: first-call allocations
    best = float("inf")
    for _ in range(REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("costs"), dict):
            raise ValueError("not a paragen cost file of this version")
        return data["costs"]
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring the call-cost cache {path} ({e}); the costs are measured again", stacklevel=3)
        return {}


def _parse(key: str, entry: Any) -> CallCosts | None:
    try:
        as_costs = lambda d: {int(n): float(s) for n, s in d.items()} if d is not None else None  # noqa: E731
        return CallCosts(key=key, batch=int(entry["batch"]), target=as_costs(entry["target"]),
                         draft=as_costs(entry.get("draft")), heads=entry.get("heads"),
                         seconds=float(entry.get("seconds", 0.0)))
    except (KeyError, TypeError, ValueError, AttributeError):
        warnings.warn(f"ignoring a malformed call-cost entry for {key}; measuring it again", stacklevel=3)
        return None


def _write(path: Path, key: str, costs: CallCosts) -> None:
    """Add one entry, atomically (temp file + rename): a reader sees the old file or the new one.
    A cache that cannot be written is a warning, not an error: the costs are in memory."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = _read(path) if path.exists() else {}
        stored[key] = costs.to_dict()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": VERSION, "costs": stored}, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write the call-cost cache {path} ({e})", stacklevel=3)
