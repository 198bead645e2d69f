"""Train a causal language model on Python source: ``paragen train lm``.

AdamW, linear warm-up then cosine decay to 10%, bf16 autocast (on the CPU or the GPU), gradient clipping,
periodic held-out loss and next-token accuracy, atomic resumable checkpoints, and an
optional wall-clock budget. The result is a Hugging Face layout model directory.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from paragen.errors import InvalidInputError, VocabularyMismatchError
from paragen.models import parse_device
from paragen.models.io import load_native, resolve, save_model
from paragen.models.native import NativeConfig, NativeModel
from paragen.tokenizer import Tokenizer
from paragen.train.continuations import RECORD as CONTINUATIONS
from paragen.train.continuations import continuations_record
from paragen.train.corpus import MANIFEST, find_corpus
from paragen.train.loop import fit, training_record
from paragen.train.tokenizer import train_tokenizer

# Model shapes by name. ``target`` and ``draft`` are the shipped pair (draft ~10x smaller).
SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "draft": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    # Wider and shallower: on CPU a draft call's cost is per-layer op overhead more than FLOPs.
    "draft-wide": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2),
    "target": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2),
}


PRECISIONS = ("bf16", "fp32")  # bf16 autocast (CPU or CUDA), or plain fp32; fp16 autocast is not implemented


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``paragen train lm``: each field's help is its ``--flag``'s help."""

    size: str = field(default="tiny", metadata={"help": "model shape: " + " | ".join(SIZES)})
    out: str = field(default="runs/lm", metadata={"help": "output model directory"})
    data: str | None = field(default=None, metadata={
        "help": "directory of *.py files to train on (default: the running Python's standard library)"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "reuse this tokenizer directory (a draft must share its target's); default: train one"})
    vocab_size: int = field(default=4096, metadata={"help": "tokens in a newly trained tokenizer"})
    seq_len: int = field(default=256, metadata={"help": "tokens per training window"})
    batch_size: int = field(default=16, metadata={"help": "windows per optimiser step"})
    steps: int = field(default=1000, metadata={
        "help": "optimiser steps (the schedule's length unless --minutes ends training first)"})
    minutes: float | None = field(default=None, metadata={
        "help": "wall-clock budget in minutes, > 0; the schedule then follows time (default: none, --steps only)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW), after warm-up; cosine decay to 10%"})
    warmup: int = field(default=100, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (not on norms and biases)"})
    clip: float = field(default=1.0, metadata={"help": "gradient norm clipping"})
    seed: int = field(default=0, metadata={"help": "seed of the weights and the batch sampler"})
    precision: str = field(default="bf16", metadata={
        "help": "bf16 (autocast, on the CPU or the GPU) | fp32", "choices": PRECISIONS})
    device: str = field(default="cpu", metadata={
        "help": "where to train: cpu, cuda or cuda:N (the batch sampler stays on the CPU, so a seed gives the same "
        "batches anywhere)"})
    eval_every: int = field(default=200, metadata={"help": "held-out evaluation every N steps"})
    eval_windows: int = field(default=64, metadata={"help": "held-out windows per evaluation"})
    checkpoint_every: int = field(default=200, metadata={"help": "checkpoint every N steps (and at the end)"})
    max_files: int | None = field(default=None, metadata={"help": "read only the first N corpus files (for tests)"})
    attention: str = field(default="causal", metadata={"help": "causal (set by the command, not a flag)"})
    init: str | None = field(default=None, metadata={
        "help": "start from this model's weights (built-in name or directory): its shape replaces --size and its "
        "tokenizer is used; the optimiser and schedule start afresh"})

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.minutes is not None and not self.minutes > 0:
            raise InvalidInputError(f"minutes must be > 0, got {self.minutes}: leave it out for no time budget")
        for name in ("seq_len", "batch_size", "vocab_size", "eval_every", "eval_windows", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)}")
        parse_device(self.device)  # a missing GPU fails here, before the corpus is read


def train_field(name: str, default: Any) -> Any:
    """A ``TrainConfig`` setting with another default in a derived config: its help stays
    ``TrainConfig``'s (one place for what a flag means)."""
    return field(default=default, metadata=TrainConfig.__dataclass_fields__[name].metadata)


def encode_files(tok: Tokenizer, texts: list[str], batch: int = 256) -> np.ndarray:
    """One stream of tokens, files separated by EOS (uint16: vocabularies stay < 65536).
    Encoded ``batch`` files at a time: a tokenizers ``Encoding`` keeps strings and offsets
    per token, so encoding a 60M-token corpus at once held about 9 GB."""
    dtype = np.uint16 if tok.vocab_size < 65536 else np.int32
    parts = []
    for i in range(0, len(texts), batch):
        for enc in tok.backend.encode_batch(texts[i : i + batch], add_special_tokens=False):
            parts.append(np.asarray(enc.ids + [tok.eos_id], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


@torch.no_grad()
def evaluate(model: NativeModel, heldout: torch.Tensor, cfg: TrainConfig) -> tuple[float, float]:
    """Mean loss and next-token accuracy over fixed, evenly spaced held-out windows."""
    model.eval()
    n = min(cfg.eval_windows, max(1, (len(heldout) - 1) // cfg.seq_len))
    starts = np.linspace(0, len(heldout) - cfg.seq_len - 1, n).astype(int)
    losses, correct, total = [], 0, 0
    device = model.lm_head.weight.device
    for chunk in np.array_split(starts, max(1, n // 16)):
        x = torch.stack([heldout[s : s + cfg.seq_len + 1] for s in chunk]).long().to(device)
        logits = model(x[:, :-1], torch.arange(cfg.seq_len, device=device).expand(len(chunk), -1)).float()
        losses.append(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item())
        correct += (logits.argmax(-1) == x[:, 1:]).sum().item()
        total += x[:, 1:].numel()
    model.train()
    return sum(losses) / total, correct / total


def prepare(cfg: TrainConfig, log: Callable[[str], None] = lambda message: None) -> tuple[
        Tokenizer, torch.Tensor, torch.Tensor, dict]:
    """Read, split and tokenize the corpus (a tokenizer is trained first unless given);
    ``log`` hears what it is doing (this takes tens of seconds on the standard library)."""
    corpus = find_corpus(cfg.data)
    train_files = corpus.train_files[: cfg.max_files] if cfg.max_files else corpus.train_files
    heldout_files = corpus.heldout_files[: max(1, cfg.max_files // 10)] if cfg.max_files else corpus.heldout_files
    log(f"reading {len(train_files)} training and {len(heldout_files)} held-out files under {corpus.root}")
    train_texts = [corpus.read(f) for f in train_files]
    if cfg.tokenizer:
        tok = Tokenizer.from_dir(cfg.tokenizer)
    else:
        log(f"training a {cfg.vocab_size}-token BPE tokenizer")
        tok = train_tokenizer(train_texts, cfg.vocab_size)
    log("tokenizing")
    train = torch.from_numpy(encode_files(tok, train_texts).astype(np.int64))
    heldout = torch.from_numpy(encode_files(tok, [corpus.read(f) for f in heldout_files]).astype(np.int64))
    log(f"{len(train)} training tokens, {len(heldout)} held out")
    split = {
        "root": str(corpus.root),
        "train_files": len(train_files),
        "heldout_files": list(heldout_files),
        "train_tokens": len(train),
        "heldout_tokens": len(heldout),
    }
    if (corpus.root / MANIFEST).is_file():  # a built corpus: what it holds (sources, licences, tokens)
        split["manifest"] = corpus_record(corpus.root)
    if (corpus.root / CONTINUATIONS).is_file():  # a model's own text (`train continuations`): which model, how
        split["continuations"] = continuations_record(corpus.root)
    return tok, train, heldout, split


def corpus_record(root: Path) -> dict:
    """A built corpus's manifest as a training record keeps it: sources with versions, licences,
    where they were copied from, files and tokens; its split rule and totals."""
    manifest = json.loads((root / MANIFEST).read_text())
    keys = ("name", "kind", "version", "licence", "from", "train_files", "heldout_files", "tokens")
    return {"command": manifest.get("command"), "split": manifest.get("split"), "totals": manifest.get("totals"),
            "sources": [{k: src.get(k) for k in keys} for src in manifest["sources"]]}


def init_checked_tokenizer(init_dir: Path, tokenizer: str | None) -> Path:
    """The tokenizer to train an ``--init`` model with: its own; ``tokenizer``, if given, must be the same."""
    if tokenizer and Tokenizer.from_dir(tokenizer).fingerprint() != Tokenizer.from_dir(init_dir).fingerprint():
        raise VocabularyMismatchError(f"--init {init_dir} has another tokenizer than --tokenizer {tokenizer}: "
                                      "leave --tokenizer out to use the model's own")
    return init_dir


def say(message: str) -> None:
    """A progress message on stderr (the model's output goes to stdout)."""
    print(f"paragen train: {message}", file=sys.stderr, flush=True)


def lm_loss(model: NativeModel, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """Next-token cross-entropy over a batch of windows [B, L + 1] (on the model's device)."""
    x, y = batch[:, :-1], batch[:, 1:]
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x, torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1))
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def train_lm(cfg: TrainConfig, resume: bool = False, progress: bool = True, command: str | None = None,
             stop_at: int | None = None) -> dict:
    """Train, checkpoint, and write the final model directory; returns the training record.

    ``stop_at``: end this run after that many steps in all (checkpointed, as a time budget
    would), so that a later ``resume=True`` run continues exactly where it stopped.
    """
    out = Path(cfg.out)
    work = out.parent / f".{out.name}.work"  # checkpoints live beside, not inside, the model dir
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    init_dir = resolve(cfg.init) if cfg.init else None
    if init_dir is not None:
        cfg = replace(cfg, tokenizer=str(init_checked_tokenizer(init_dir, cfg.tokenizer)))
    tok, train, heldout, split = prepare(cfg, log=say if progress else lambda message: None)
    if tok.eos_id is None:
        raise ValueError("the tokenizer has no end-of-text token")
    if init_dir is not None:
        model = load_native(init_dir).train()
        if model.config.attention != cfg.attention:
            raise InvalidInputError(f"--init {cfg.init} has {model.config.attention} attention, this command trains "
                                    f"{cfg.attention}")
    else:
        mconf = NativeConfig(
            vocab_size=tok.vocab_size, max_position_embeddings=max(1024, cfg.seq_len),
            eos_token_id=tok.eos_id, mask_token_id=tok.mask_id, attention=cfg.attention, **SIZES[cfg.size],
        )
        model = NativeModel(mconf).init_weights(cfg.seed)
    state = fit(model, cfg, train, lambda m, batch, g, step: lm_loss(m, batch, cfg.precision),
                lambda m: evaluate(m, heldout, cfg), work / "checkpoint.pt", resume=resume, progress=progress,
                desc=f"train {cfg.init or cfg.size}", stop_at=stop_at)
    record = training_record(cfg, model, state, evaluate(model, heldout, cfg), split, command, init_dir)
    save_model(model, tok, out, dtype=torch.float16, extra_files={"training.json": json.dumps(record, indent=2) + "\n"})
    return record
