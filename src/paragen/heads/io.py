"""Save and load heads: a small directory (``heads.json``, ``heads.safetensors``, ``training.json``)
that names the target it was trained on and refuses any other.

The target is identified by a fingerprint, not a file hash, so that the same weights
loaded in another dtype or through the other backend still match: its vocabulary and
hidden sizes, and a probe, the final-norm hidden states of a fixed token sequence and a
few rows of its embedding and output projection, each projected on a fixed random
direction (float64). Another model, even one sharing the embeddings, moves the probe by
about its own norm; the same weights in bfloat16 move it by well under 1%.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any

import torch

from paragen.errors import HeadsMismatchError, ModelLoadError
from paragen.heads.modules import Eagle, Heads, HeadsConfig, make_heads
from paragen.models.base import Model
from paragen.models.io import BUILTIN_DIR, atomic_directory

# Built-in heads live in builtin/heads/<target>-<kind>, e.g. code-target-medusa.
BUILTIN_HEADS_DIR = BUILTIN_DIR / "heads"

PROBE_TOKENS = 8
PROBE_ROWS = 16
PROBE_TOLERANCE = 0.05  # relative distance between probes; see the module docstring


@torch.inference_mode()
def fingerprint(model: Model) -> dict[str, Any]:
    """The target's identity as heads record it (see the module docstring)."""
    embed, proj = model.head_weights()
    V, H = proj.shape
    g = torch.Generator().manual_seed(0)
    r = torch.randn(H, generator=g, dtype=torch.float64)
    rows = torch.randperm(V, generator=g)[:PROBE_ROWS]
    tokens = torch.randperm(V, generator=g)[:PROBE_TOKENS]
    _, hidden = model(tokens[None], torch.arange(len(tokens))[None], return_hidden=True)
    probe = torch.cat([hidden[0].double().cpu() @ r, embed[rows].double().cpu() @ r, proj[rows].double().cpu() @ r])
    return {"name": getattr(model, "name", "model"), "vocab_size": V, "hidden_size": H, "probe": probe.tolist()}


def check_target(saved: dict[str, Any], model: Model, where: str = "these heads") -> None:
    """Raise ``HeadsMismatchError`` unless ``model`` is the target ``saved`` fingerprints."""
    now = fingerprint(model)
    named = saved.get("name", "another model")
    if (saved.get("vocab_size"), saved.get("hidden_size")) != (now["vocab_size"], now["hidden_size"]):
        raise HeadsMismatchError(
            f"{where} were trained for {named} (vocab {saved.get('vocab_size')}, hidden {saved.get('hidden_size')}), "
            f"not for this model (vocab {now['vocab_size']}, hidden {now['hidden_size']}): train heads for it with "
            "`paragen train heads --target MODEL`")
    a, b = torch.tensor(saved["probe"], dtype=torch.float64), torch.tensor(now["probe"], dtype=torch.float64)
    if float((a - b).norm()) > PROBE_TOLERANCE * float(a.norm()):
        raise HeadsMismatchError(
            f"{where} were trained for {named}, and this model's weights differ from it: load that model, "
            "or train heads for this one with `paragen train heads --target MODEL`")


def save_heads(heads: Heads, out: str | os.PathLike, dtype: torch.dtype = torch.float16,
               extra_files: dict[str, str] | None = None) -> Path:
    """Write a heads directory atomically (all files appear at once, or none)."""
    from safetensors.torch import save_file

    with atomic_directory(out) as tmp:
        state = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in heads.state_dict().items()}
        save_file(state, str(tmp / "heads.safetensors"), metadata={"format": "pt"})
        (tmp / "heads.json").write_text(json.dumps(heads.config.to_dict(), indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out)


def builtin_heads() -> dict[str, Path]:
    """Built-in heads names (``<target>-<kind>``) and their directories."""
    if not BUILTIN_HEADS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUILTIN_HEADS_DIR.iterdir()) if (p / "heads.json").exists()}


def builtin_heads_for(target: str, kinds: tuple[str, ...]) -> str | None:
    """The name of the built-in heads of one of ``kinds`` for the built-in model ``target``, if shipped."""
    found = builtin_heads()
    return next((f"{target}-{k}" for k in kinds if f"{target}-{k}" in found), None)


def default_heads(model: Model, kinds: tuple[str, ...]) -> Heads | None:
    """The built-in heads of one of ``kinds`` trained for ``model``, or None when none is shipped
    for it (the name matches a built-in model but the weights differ: also None)."""
    name = builtin_heads_for(getattr(model, "name", ""), kinds)
    if name is None:
        return None
    loaded = _DEFAULTS.setdefault(model, {})
    heads = loaded.get(name)
    if heads is not None and heads.proj.data_ptr() == model.head_weights()[1].data_ptr():
        return heads  # still bound to the model's weights (a cast or a move reloads them)
    try:
        loaded[name] = heads = load_heads(name, model)
    except HeadsMismatchError:
        return None
    return heads


# The built-in heads loaded for each model, by name: generate() on a built-in target would
# otherwise read them from disk and fingerprint the target (a forward) on every call.
_DEFAULTS: weakref.WeakKeyDictionary[Model, dict[str, Heads]] = weakref.WeakKeyDictionary()


def load_heads(path: str | os.PathLike, model: Model) -> Heads:
    """Heads from a directory or a built-in heads name (``paragen models`` lists them), bound to
    ``model`` (their target), in the model's dtype.

    Refuses, with ``HeadsMismatchError``, a model other than the one they were trained for.
    """
    path, config, state = read_heads(path)
    check_target(config.target, model, where=f"the heads in {path}")
    return bind_heads(config, state, model).eval()


def heads_dir(path: str | os.PathLike) -> Path:
    """The directory of a built-in heads name, or ``path`` itself."""
    return builtin_heads().get(str(path), Path(path))


def read_heads(path: str | os.PathLike) -> tuple[Path, HeadsConfig, dict[str, torch.Tensor]]:
    """A heads directory's (resolved path, config, weights), unbound; ``path`` may be a built-in heads name."""
    from safetensors.torch import load_file

    path = heads_dir(path)
    if not (path / "heads.json").exists():
        raise ModelLoadError(f"{path} has no heads.json: is it a directory written by `paragen train heads`?")
    try:
        config = HeadsConfig.from_dict(json.loads((path / "heads.json").read_text()))
        state = load_file(str(path / "heads.safetensors"))
    except Exception as e:
        raise ModelLoadError(f"cannot read the heads in {path} ({e}); re-train or re-copy them") from e
    return path, config, state


def bind_heads(config: HeadsConfig, state: dict[str, torch.Tensor], model: Model) -> Heads:
    """Heads of ``config`` with weights ``state`` on ``model``'s embedding and projection, in its dtype
    (no target check: ``load_heads`` makes it)."""
    embed, proj = model.head_weights()
    heads = make_heads(config, embed, proj)
    heads.load_state_dict({k: v.to(proj.dtype) for k, v in state.items()})
    return follow_compiled(heads, model)


def follow_compiled(heads: Heads, model: Model) -> Heads:
    """An EAGLE drafter on a target with a compiled step compiles its own the same way
    (``Eagle.compile_drafter``, ``auto`` as the target's); other heads are one matmul or a few."""
    if isinstance(heads, Eagle) and getattr(model, "compiled", None) is not None:
        heads.compile_drafter(auto=getattr(model, "hot", None) is not None)
    return heads


def new_heads(model: Model, kind: str, num_heads: int, seed: int = 0, std: float = 0.02, zero_out: bool = True,
              **sizes: Any) -> Heads:
    """Freshly initialised heads of ``kind`` for ``model`` (recording its fingerprint), in its dtype.
    ``sizes``: the optional ``HeadsConfig`` shape fields (inner_size, num_attention_heads, ...)."""
    embed, proj = model.head_weights()
    V, H = proj.shape
    config = HeadsConfig(kind=kind, num_heads=num_heads, hidden_size=H, vocab_size=V, target=fingerprint(model), **sizes)
    return follow_compiled(make_heads(config, embed, proj).init_weights(seed, std, zero_out), model)
