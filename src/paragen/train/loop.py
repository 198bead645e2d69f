"""The training loop shared by ``train lm`` and ``train diffusion``.

AdamW (no decay on 1-D parameters), linear warm-up then cosine decay, gradient clipping,
an optional wall-clock budget that the schedule follows, periodic held-out evaluation,
and atomic checkpoints that a ``resume`` run continues from exactly (the batch sampler's
generator is checkpointed too). ``cfg.device`` (default cpu) is where the model, its
optimiser state and each batch live; batches are drawn on the CPU and then moved, so a seed
draws the same windows on every device.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from paragen.models.native import NativeModel


@dataclass
class Progress:
    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # training seconds (evaluation excluded)
    loss_ema: float | None = None
    history: list[dict] = field(default_factory=list)


def make_optimizer(model: NativeModel, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norms and biases
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def lr_at(cfg: Any, step: int, progress: float) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to 10% of ``cfg.lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def sample_batch(data: torch.Tensor, cfg: Any, g: torch.Generator) -> torch.Tensor:
    """``cfg.batch_size`` random windows of ``cfg.seq_len + 1`` tokens [B, L + 1]."""
    starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch_size,), generator=g)
    return torch.stack([data[s : s + cfg.seq_len + 1] for s in starts.tolist()]).long()


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


def fit(
    model: NativeModel,
    cfg: Any,
    train: torch.Tensor,
    loss_fn: Callable[[NativeModel, torch.Tensor, torch.Generator, int], torch.Tensor],
    evaluate: Callable[[NativeModel], tuple[float, float]],
    checkpoint_path: Path,
    resume: bool = False,
    progress: bool = True,
    desc: str = "train",
    stop_at: int | None = None,
) -> Progress:
    """Train ``model`` in place until ``cfg.steps``, the ``cfg.minutes`` budget, or ``stop_at``.

    ``loss_fn(model, batch [B, L + 1], generator, step)`` returns the loss of one batch (``step``: the
    optimiser steps done before it, so a schedule in the loss resumes where it stopped);
    ``evaluate(model)`` returns held-out (loss, accuracy).
    """
    from tqdm import tqdm

    device = torch.device(getattr(cfg, "device", "cpu"))
    model.to(device)  # before the optimiser, whose state follows its parameters
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    state = Progress()
    if resume and checkpoint_path.exists():
        ck = torch.load(checkpoint_path, weights_only=False, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        g.set_state(ck["generator"])
        state = Progress(**ck["progress"])
    model.train()
    budget = cfg.minutes * 60 if cfg.minutes else None
    last = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    # Under a time budget the bar counts training seconds against it, so that its total and
    # ETA hold (the budget, not --steps, usually ends such a run); otherwise it counts steps.
    if budget:
        bar = tqdm(total=round(budget), initial=min(round(state.elapsed), round(budget)), unit="s",
                   disable=not progress, desc=desc, dynamic_ncols=True)
    else:
        bar = tqdm(total=cfg.steps, initial=state.step, disable=not progress, desc=desc, dynamic_ncols=True)

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, dict(model=model.state_dict(), optimizer=opt.state_dict(),
                                              generator=g.get_state(), progress=asdict(state)))

    t_last = time.time()
    while state.step < last and (budget is None or state.elapsed < budget):
        frac = max(state.step / cfg.steps, state.elapsed / budget if budget else 0.0)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, state.step, frac)
        batch = sample_batch(train, cfg, g).to(device)
        loss = loss_fn(model, batch, g, state.step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        state.step += 1
        state.tokens_seen += batch.shape[0] * cfg.seq_len
        now = time.time()
        state.elapsed, t_last = state.elapsed + now - t_last, now
        state.loss_ema = loss.item() if state.loss_ema is None else 0.95 * state.loss_ema + 0.05 * loss.item()
        bar.update(min(round(state.elapsed), round(budget)) - bar.n if budget else 1)
        bar.set_postfix(**({"step": f"{state.step}/{last}"} if budget else {}), loss=f"{state.loss_ema:.3f}",
                        tok_s=f"{state.tokens_seen / max(state.elapsed, 1e-9):.0f}")
        if state.step % cfg.eval_every == 0:
            hl, ha = evaluate(model)
            state.history.append({"step": state.step, "tokens": state.tokens_seen, "heldout_loss": hl,
                                  "heldout_accuracy": ha, "train_loss": state.loss_ema})
            bar.write(f"step {state.step}: heldout loss {hl:.3f} accuracy {ha:.3f}")
            t_last = time.time()  # evaluation time is not training time
        if state.step % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    checkpoint()
    return state


# What a model's lineage keeps of each earlier stage's training.json (not its curve or split).
LINEAGE_KEYS = ("note", "command", "teacher", "target", "steps", "tokens_seen", "heldout_loss", "heldout_accuracy",
                "heldout_kl", "heldout_agreement", "wall_seconds", "init")


def init_lineage(init_dir: str | os.PathLike | None) -> dict | None:
    """The summary of the training that made ``init_dir`` (a model or heads directory an
    ``--init`` run starts from), nesting its own ``init``: a continued model's training.json
    then says how every stage before it was made. None without an init or a training.json."""
    record = Path(init_dir) / "training.json" if init_dir is not None else None
    if record is None or not record.is_file():
        return None
    previous = json.loads(record.read_text())
    return {"from": str(init_dir), **{k: previous[k] for k in LINEAGE_KEYS if k in previous}}


def training_record(cfg: Any, model: NativeModel, state: Progress, heldout: tuple[float, float], split: dict,
                    command: str | None, init_dir: str | os.PathLike | None = None, **extra: Any) -> dict:
    """What ``training.json`` records next to a trained model; ``init_dir``: the ``--init``
    model it was continued from, whose lineage it records (``init_lineage``)."""
    lineage = init_lineage(init_dir)
    return {
        "command": command or " ".join(sys.argv),
        **({"init": lineage} if lineage else {}),
        **extra,
        "config": asdict(cfg),
        "model": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": cfg.seed,
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "heldout_loss": heldout[0],
        "heldout_accuracy": heldout[1],
        "wall_seconds": round(state.elapsed, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "split": split,
        "history": state.history,
    }
