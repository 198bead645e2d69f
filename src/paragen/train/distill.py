"""Distil a draft model from a target: ``paragen train distill``.

The draft (student) learns the target's (teacher's) next-token distribution on the corpus:
the loss is KL(p_target || q_draft) per token (Hinton et al. 2015, softened by a
temperature T and scaled by T^2 so gradients keep their size), optionally mixed with the
data cross-entropy (``ce_weight``). Speculative decoding accepts a drafted token when the
draft agrees with the target, not with the text, so the target's distribution is the
right thing to learn (DistillSpec, Zhou et al. 2024, reports higher acceptance from
distillation than from training on data alone).

The teacher is frozen (eval mode, no gradients) and the student uses its tokenizer. The
held-out metrics are those of speculative decoding: KL to the teacher, and agreement of
the draft's argmax with the teacher's (the greedy acceptance rate of a drafted token that
follows an accepted prefix), on the same fixed held-out windows as ``train lm``; the data
loss and accuracy are recorded too, to compare with a draft trained on the data alone.

Everything else is ``paragen train lm``'s: the same loop (AdamW, warm-up and cosine decay,
clipping, atomic resumable checkpoints, a wall-clock budget) and the same data pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from paragen.errors import InvalidInputError, VocabularyMismatchError
from paragen.models.io import load_native, resolve, save_model
from paragen.models.native import NativeConfig, NativeModel
from paragen.tokenizer import Tokenizer
from paragen.train.lm import SIZES, TrainConfig, prepare, train_field
from paragen.train.loop import fit, training_record


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """``TrainConfig`` plus the teacher (a built-in name or a model directory), the softening
    ``temperature``, ``ce_weight``, the share of the data cross-entropy in the loss (0: pure
    distillation). ``init`` (``TrainConfig``'s) starts from a draft, e.g. one trained on the
    data. The tokenizer is always the teacher's."""

    size: str = train_field("size", "draft")
    out: str = train_field("out", "runs/distill")
    teacher: str = field(default="code-target", metadata={"help": "the target to agree with: a built-in name or a "
                                                                  "model directory (frozen; its tokenizer is used)"})
    temperature: float = field(default=1.0, metadata={"help": "softening temperature T of both distributions; > 0"})
    ce_weight: float = field(default=0.0, metadata={
        "help": "share of the data cross-entropy in the loss, in [0, 1] (0: pure distillation)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.temperature > 0:
            raise InvalidInputError(f"temperature must be > 0, not {self.temperature}")
        if not 0.0 <= self.ce_weight <= 1.0:
            raise InvalidInputError(f"ce_weight is a share in [0, 1], not {self.ce_weight}")


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def distill_loss(student: NativeModel, teacher: NativeModel, batch: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """``(1 - ce_weight) * T^2 * KL(p_teacher,T || q_student,T) + ce_weight * CE(data)`` per token."""
    x, y = batch[:, :-1], batch[:, 1:]
    pos = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    with torch.no_grad(), _autocast(cfg.precision):
        t_logits = teacher(x, pos)
    with _autocast(cfg.precision):
        s_logits = student(x, pos)
    s_logits, t = s_logits.float(), cfg.temperature
    log_p = F.log_softmax(t_logits.float() / t, dim=-1)
    log_q = F.log_softmax(s_logits / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * t * t
    if cfg.ce_weight == 0.0:
        return kl
    ce = F.cross_entropy(s_logits.flatten(0, 1), y.flatten())
    return (1.0 - cfg.ce_weight) * kl + cfg.ce_weight * ce


@torch.no_grad()
def distill_metrics(student: NativeModel, teacher: NativeModel, heldout: torch.Tensor, cfg: TrainConfig) -> dict:
    """On fixed, evenly spaced held-out windows (``train lm``'s): KL(p_teacher || q_student)
    at temperature 1, agreement of the two argmaxes, and the student's data loss and accuracy."""
    student.eval()
    n = min(cfg.eval_windows, max(1, (len(heldout) - 1) // cfg.seq_len))
    starts = np.linspace(0, len(heldout) - cfg.seq_len - 1, n).astype(int)
    kl = agree = ce = correct = total = 0.0
    for chunk in np.array_split(starts, max(1, n // 16)):
        x = torch.stack([heldout[s : s + cfg.seq_len + 1] for s in chunk]).long()
        pos = torch.arange(cfg.seq_len).expand(len(chunk), -1)
        t_logits = teacher(x[:, :-1], pos).float()
        s_logits = student(x[:, :-1], pos).float()
        log_p, log_q = F.log_softmax(t_logits, -1), F.log_softmax(s_logits, -1)
        kl += (log_p.exp() * (log_p - log_q)).sum().item()
        agree += (s_logits.argmax(-1) == t_logits.argmax(-1)).sum().item()
        ce += F.cross_entropy(s_logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
        correct += (s_logits.argmax(-1) == x[:, 1:]).sum().item()
        total += x[:, 1:].numel()
    student.train()
    return {"kl": kl / total, "agreement": agree / total, "loss": ce / total, "accuracy": correct / total}


def load_teacher(name_or_path: str) -> tuple[Path, NativeModel]:
    """The teacher's directory and its frozen float32 model."""
    path = resolve(name_or_path)
    teacher = load_native(path).eval()
    teacher.requires_grad_(False)
    return path, teacher


def train_distill(cfg: DistillConfig, resume: bool = False, progress: bool = True, command: str | None = None,
                  stop_at: int | None = None) -> dict:
    """Distil, checkpoint, and write the student's model directory; returns the training record.

    In the progress lines and ``history``, "heldout loss" and "accuracy" are the KL to the
    teacher and the agreement with its argmax; ``training.json`` names them ``heldout_kl`` and
    ``heldout_agreement`` and keeps ``heldout_loss`` / ``heldout_accuracy`` for the data.
    """
    out = Path(cfg.out)
    work = out.parent / f".{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    teacher_dir, teacher = load_teacher(cfg.teacher)
    tok, train, heldout, split = prepare(replace(cfg, tokenizer=str(teacher_dir)))
    if tok.vocab_size != teacher.config.vocab_size:
        raise VocabularyMismatchError(f"{teacher_dir}: tokenizer has {tok.vocab_size} tokens, model {teacher.config.vocab_size}")
    init_dir = resolve(cfg.init) if cfg.init else None
    if init_dir is not None:
        if Tokenizer.from_dir(init_dir).fingerprint() != tok.fingerprint():
            raise VocabularyMismatchError(f"--init {cfg.init} has another tokenizer than the teacher {cfg.teacher}")
        student = load_native(init_dir).train()
    else:
        mconf = NativeConfig(
            vocab_size=tok.vocab_size, max_position_embeddings=max(1024, cfg.seq_len),
            eos_token_id=tok.eos_id, mask_token_id=tok.mask_id, **SIZES[cfg.size],
        )
        student = NativeModel(mconf).init_weights(cfg.seed)

    def evaluate(m: NativeModel) -> tuple[float, float]:
        r = distill_metrics(m, teacher, heldout, cfg)
        return r["kl"], r["agreement"]

    if progress:
        print(f"distilling {cfg.init or cfg.size} from {teacher_dir}: held-out 'loss' is KL to the teacher, "
              "'accuracy' the agreement with its argmax")
    state = fit(student, cfg, train, lambda m, batch, g, step: distill_loss(m, teacher, batch, cfg), evaluate,
                work / "checkpoint.pt", resume=resume, progress=progress, desc=f"distill {cfg.init or cfg.size}", stop_at=stop_at)
    final = distill_metrics(student, teacher, heldout, cfg)
    state.history = [{"step": h["step"], "tokens": h["tokens"], "heldout_kl": h["heldout_loss"],
                      "heldout_agreement": h["heldout_accuracy"], "train_loss": h["train_loss"]} for h in state.history]
    record = training_record(cfg, student, state, (final["loss"], final["accuracy"]), split, command, init_dir,
                             teacher=cfg.teacher, heldout_kl=final["kl"], heldout_agreement=final["agreement"])
    save_model(student, tok, out, dtype=torch.float16, extra_files={"training.json": json.dumps(record, indent=2) + "\n"})
    return record
