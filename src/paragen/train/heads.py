"""Train prediction heads on a frozen target: ``paragen train heads``.

Data: windows of the same Python corpus the target was trained on, labelled by the target
itself. One frozen forward per window gives the target's final-norm hidden state h_t and
its prediction at every position t, so head j at position t learns the target's prediction
at t + j + 1 (the token the target would emit after the true prefix x_{<=t+j+1}); hydra's
and eagle's token inputs are the true tokens x_{t+1}.., the prefix those labels condition
on. No generation is needed: a window costs one target forward, and every position of it
is a training example for every head.

Why not Medusa-1's self-distillation on generated text: generating the corpus costs one
target call per token (the target greedily continuing each prompt), against one call per
window here, and a greedy continuation of a 4096-token model loops readily, which would
train the heads on repetitive text. The labels are the target's own in both cases, so the
heads still learn to agree with the target rather than with the corpus. ``labels``:
``argmax`` (cross-entropy against the target's top-1: what greedy acceptance tests) or
``soft`` (cross-entropy against its whole distribution: the knowledge-distillation loss of
Medusa-2, closer to what sampling acceptance rewards); compare both on the same budget.

EAGLE's loss (Li et al. 2024, section 4.2): Smooth L1 between the predicted feature of
t + 1 and the target's, plus ``eagle_cls_weight`` (their 0.1) times the token loss; its
input features get uniform noise (``eagle_noise``, their U(-0.1, 0.1)) so that, drafting
past depth 1 on its own slightly wrong features, the drafter has seen inputs like them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from paragen.errors import InvalidInputError
from paragen.heads import KINDS, Heads, fingerprint, new_heads, save_heads
from paragen.heads.io import bind_heads, heads_dir, read_heads
from paragen.models import device_of, load
from paragen.models.base import Model
from paragen.models.io import resolve
from paragen.train.lm import TrainConfig, prepare, train_field
from paragen.train.loop import fit, training_record


@dataclass(frozen=True)
class HeadsTrainConfig(TrainConfig):
    """``TrainConfig`` (optimiser, schedule, budget, corpus, checks) plus the heads' own
    settings; ``size``, ``tokenizer``, ``vocab_size`` and ``attention`` come from the target."""

    kind: str = field(default="medusa", metadata={"help": "head architecture: " + " | ".join(KINDS)})
    target: str = field(default="code-target", metadata={"help": "built-in model name or model directory (frozen)"})
    out: str = train_field("out", "runs/heads")
    num_heads: int = field(default=4, metadata={
        "help": "blockwise, medusa, hydra: heads, i.e. tokens drafted past the target's own (eagle: always 1)"})
    labels: str = field(default="argmax", metadata={
        "help": "argmax (the target's greedy token at each position) | soft (its whole distribution)"})
    eagle_cls_weight: float = field(default=0.1, metadata={"help": "eagle: weight of the token loss beside the feature loss"})
    eagle_noise: float = field(default=0.1, metadata={
        "help": "eagle: uniform noise U(-a, a) on the drafter's input features (EAGLE's; training only)"})
    steps: int = train_field("steps", 2000)
    warmup: int = train_field("warmup", 50)
    weight_decay: float = train_field("weight_decay", 0.0)
    eval_windows: int = train_field("eval_windows", 32)
    init: str | None = field(default=None, metadata={
        "help": "start from these heads (a heads directory or built-in heads name) instead of random ones, e.g. the "
                "heads of the model --target was continued from: the same kind, number of heads and sizes; they are "
                "re-bound to --target, and the optimiser and schedule start afresh"})
    readout_fraction: float = field(default=1.0, metadata={
        "help": "share of each window's positions that training reads out through the vocabulary projection, per "
                "head, drawn afresh each step (the projection is most of the cost: 0.25 trains about 2-3x more steps "
                "per minute); evaluation reads out every position; in (0, 1]"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown head kind '{self.kind}': choose one of {', '.join(KINDS)}")
        if self.labels not in ("argmax", "soft"):
            raise InvalidInputError(f"labels must be 'argmax' or 'soft', got '{self.labels}'")
        if self.num_heads < 1:
            raise InvalidInputError(f"num_heads must be >= 1, got {self.num_heads}")
        if not 0 < self.readout_fraction <= 1:
            raise InvalidInputError(f"readout_fraction must be in (0, 1], got {self.readout_fraction}")


def head_loss(heads: Heads, target: Model, batch: torch.Tensor, cfg: HeadsTrainConfig,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[int], list[int]]:
    """Loss over windows [B, L + 1] (the last token is unused) and, per head, (correct top-1, count).
    ``generator``: training draws eagle's feature noise and the positions read out
    (``readout_fraction``) from it (checkpointed, so resume stays exact); evaluation passes
    None: no noise, every position."""
    x = batch[:, :-1].to(device_of(target))  # the device the target and the heads train on (--device)
    B, L = x.shape
    losses, correct, count = [], [], []
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        with torch.no_grad():  # the frozen target: labels and features
            logits, hidden = target(x, torch.arange(L, device=x.device).expand(B, -1), return_hidden=True)
        hidden = hidden.float()
        noisy = hidden
        if heads.kind == "eagle" and generator is not None and cfg.eagle_noise > 0:
            # drawn on the CPU, as the batches are: a seed gives the same run on any device
            noise = torch.rand(hidden.shape, generator=generator, dtype=hidden.dtype).to(hidden.device)
            noisy = hidden + (2 * noise - 1) * cfg.eagle_noise
        feats = heads.train_features(noisy, x)  # [B, L, K, H]; eagle: K = 1, the predicted features of t + 1
        for j in range(feats.shape[2]):
            n = L - j - 1  # positions whose label x_{t+j+2} lies in the window
            pick = torch.arange(n)
            if generator is not None and cfg.readout_fraction < 1:
                pick = torch.randperm(n, generator=generator)[: max(1, round(n * cfg.readout_fraction))]
            pick = pick.to(x.device)
            pred = heads.readout(feats[:, pick, j]).float().flatten(0, 1)
            want = logits[:, pick + j + 1].float().flatten(0, 1)
            top = want.argmax(-1)
            losses.append(F.cross_entropy(pred, top if cfg.labels == "argmax" else want.softmax(-1)))
            correct.append(int((pred.argmax(-1) == top).sum()))
            count.append(int(top.numel()))
    loss = torch.stack(losses).mean()
    if heads.kind == "eagle":
        loss = F.smooth_l1_loss(feats[:, :-1, 0].float(), hidden[:, 1:]) + cfg.eagle_cls_weight * loss
    return loss, correct, count


@torch.no_grad()
def evaluate_heads(heads: Heads, target: Model, heldout: torch.Tensor, cfg: HeadsTrainConfig) -> tuple[float, list[float]]:
    """Mean loss and per-head top-1 agreement with the target over fixed held-out windows."""
    heads.eval()
    n = min(cfg.eval_windows, max(1, (len(heldout) - 1) // cfg.seq_len))
    starts = np.linspace(0, len(heldout) - cfg.seq_len - 1, n).astype(int)
    losses, correct, count = [], None, None
    for chunk in np.array_split(starts, max(1, n // 8)):
        batch = torch.stack([heldout[s : s + cfg.seq_len + 1] for s in chunk]).long()
        loss, c, k = head_loss(heads, target, batch, cfg)
        losses.append(loss.item() * len(chunk))
        correct = c if correct is None else [a + b for a, b in zip(correct, c)]
        count = k if count is None else [a + b for a, b in zip(count, k)]
    heads.train()
    return sum(losses) / len(starts), [a / b for a, b in zip(correct, count)]


def start_heads(cfg: HeadsTrainConfig, target: Model) -> Heads:
    """Fresh heads for ``target``, or with ``cfg.init`` trained ones re-bound to it (recording its
    fingerprint): a target continued from another keeps nearly the same hidden states, so its
    old heads are a far better start than random ones."""
    num_heads = 1 if cfg.kind == "eagle" else cfg.num_heads
    if cfg.init is None:
        return new_heads(target, cfg.kind, num_heads, seed=cfg.seed)
    path, config, state = read_heads(cfg.init)
    V, H = target.head_weights()[1].shape
    if (config.kind, config.num_heads, config.hidden_size, config.vocab_size) != (cfg.kind, num_heads, H, V):
        raise InvalidInputError(
            f"--init {path} holds {config.num_heads} {config.kind} heads for hidden size {config.hidden_size} and "
            f"{config.vocab_size} tokens; this run trains {num_heads} {cfg.kind} heads on a target with {H} and {V}: "
            "give the same --kind and --num-heads as those heads, or leave --init out")
    return bind_heads(replace(config, target=fingerprint(target)), state, target)


def train_heads(cfg: HeadsTrainConfig, resume: bool = False, progress: bool = True, command: str | None = None,
                stop_at: int | None = None) -> dict:
    """Train heads for ``cfg.target`` (frozen) and write the heads directory; returns the training record.
    ``stop_at`` and ``resume`` as in ``paragen.train.lm.train_lm``."""
    out = Path(cfg.out)
    work = out.parent / f".{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    # native backend: an nn.Module, on the device the heads train on
    target = load(cfg.target, dtype=torch.float32, device=cfg.device).eval().requires_grad_(False)
    _, train, heldout, split = prepare(replace(cfg, tokenizer=str(resolve(cfg.target))))  # the target's tokenizer
    heads = start_heads(cfg, target)
    state = fit(heads, cfg, train, lambda h, batch, g, step: head_loss(h, target, batch, cfg, g)[0],
                lambda h: (lambda loss, acc: (loss, sum(acc) / len(acc)))(*evaluate_heads(h, target, heldout, cfg)),
                work / "checkpoint.pt", resume=resume, progress=progress, desc=f"train {cfg.kind} heads",
                stop_at=stop_at)
    loss, per_head = evaluate_heads(heads, target, heldout, cfg)
    record = training_record(cfg, heads, state, (loss, sum(per_head) / len(per_head)), split, command,
                             heads_dir(cfg.init) if cfg.init else None, target=cfg.target, per_head_accuracy=per_head,
                             bytes_fp16=2 * sum(p.numel() for p in heads.parameters()))
    save_heads(heads, out, dtype=torch.float16, extra_files={"training.json": json.dumps(record, indent=2) + "\n"})
    return record
