"""Train a masked-diffusion language model on Python source: ``paragen train diffusion``.

Objective (MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025): draw t ~ U(0, 1), replace
each token by the mask token with probability t, and minimise the cross-entropy of the
original tokens at the masked positions weighted by 1/t, per maskable token: an upper
bound on the negative log-likelihood per token (so the held-out loss compares with an AR
model's). t is drawn stratified over the batch (MDLM's low-discrepancy sampler) and kept
>= ``eps`` so that 1/t stays bounded (LLaDA). A random-length prefix of each training
window is never masked, so the model learns to complete a prompt (as LLaDA's SFT keeps the
prompt clean); the held-out loss is unconditional (no prefix).

Block diffusion (``--block-size B``; BD3-LM, Arriola et al. 2025): attention is causal
across blocks of B positions and bidirectional within one, and each block draws its own
t. The noised window and the clean window are fed side by side (2L tokens, BD3-LM's
vectorised training): each noised block sees itself and the clean blocks before it,
exactly what it sees at inference, where finished blocks are clean.

``--init DIR`` starts from a model directory's weights (an AR model: SDAR adapts AR
models to block diffusion this way); the shape and tokenizer then come from DIR.

``--shift`` (Dream, Ye et al. 2025; Fast-dLLM v2, Wu et al. 2025): the token at position p
is predicted by the logits at p - 1, as in the AR model, so an adapted model keeps the
head it already has instead of learning a new meaning for every output. Position 0 then
has no predictor and is never masked. With blocks, the first position of a noised block
is predicted from the clean half's last position of the block before (at inference that
logit comes from the finished, clean block): it is plain next-token prediction, which the
AR model already does.

``--complementary`` (Fast-dLLM v2; SDAR): each window is fed twice, once with its mask and
once with the complementary one (the masked positions of one view are the clean ones of the
other, rate 1 - t, weighted 1/(1 - t)), so every maskable token of the window is trained at
every step; a step then holds half as many distinct windows, at the same cost.

``--anneal N`` (full attention only; DiffuLLaMA, Gong et al. 2025): the AR model's causal
attention is opened over the first N steps: a key after the query is visible with
probability step / N (one draw per step), so the adapted model is not asked at once to use a
future it has never seen.

``--infill F`` (full attention only): a share F of the training windows is laid out as a hole:
a clean prefix, a span of 1..``infill_span`` tokens followed by 0..``infill_pad`` end-of-text
tokens, then the rest of the window as a clean suffix; only the hole is masked. That is the
layout ``paragen.infill`` decodes: a hole of masks between the prefix and the suffix, which
the model fills with the span and then end-of-text (LLaDA's SFT pads answers with EOS the
same way), so the span's length is the model's choice in one decode. ``--infill-lines F`` cuts a
share F of the holes at line starts (1..3 whole lines): a hole cut anywhere rarely ends where a
line does, so without them the model has little to learn closing a line-shaped hole from.
``--infill-tail F`` masks a share F of the holes as a tail (clean up to a point, masked from
it): a hole masked at random almost never has its first pad masked together with every pad
after it, which is where the left-to-right ``prefix`` rule must decide that the span has ended
(the shipped model, trained without it, gives end-of-text 0.05% at the true end of a line hole).

``--block-tail F`` (block-causal only) masks a share F of the noised blocks as a tail in the
same way: clean up to a point, masked from it to the block's end. That is every state the
left-to-right ``prefix`` rule of ``block_diffusion`` decodes in, and random masking draws it
for a clean first k of 1..7 positions in about 3% of blocks of 8 (the k-th with probability
1 / (9 C(8, k))). A distilled block model decoded that way committed a token the target
would not have (" given" for " isinstance") with two masks after it in view: the state it
had least practice in.

``--teacher AR`` (block-causal only) adds, at the first masked position of every block masked
as a tail (by ``--block-tail`` or by chance), the KL from the AR model's next-token
distribution there (Hinton et al. 2015; DistillSpec's objective for drafts). Only there does
the block model see exactly the AR model's context: every token before the position clean,
nothing after it. These are the positions whose argmax a left-to-right decode commits alone,
so matching the AR model there is matching ``ar``'s text; training on the AR model's own
continuations instead taught a block model its loops and, on real prompts, agreement with its
greedy token fell (``scripts/block_tail_probe.py``).

Everything else is ``paragen train lm``'s: AdamW, warm-up and cosine decay, bf16
autocast on CPU, clipping, atomic resumable checkpoints, an optional wall-clock budget.
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
from paragen.train.distill import load_teacher
from paragen.train.lm import SIZES, TrainConfig, prepare, say
from paragen.train.loop import fit, training_record


@dataclass(frozen=True)
class DiffusionTrainConfig(TrainConfig):
    """``TrainConfig`` plus: attention "bidirectional", or "block_causal" with ``block_size``
    (which must divide ``seq_len``); ``init``: a model directory to start from; ``eps``:
    the smallest masking rate."""

    out: str = field(default="runs/diffusion", metadata={"help": "output model directory"})
    attention: str = field(default="bidirectional", metadata={
        "help": "bidirectional | block_causal (set from --block-size, not a flag)"})
    block_size: int | None = field(default=None, metadata={
        "help": "block-causal attention with blocks of this many positions (must divide --seq-len)"})
    init: str | None = field(default=None, metadata={
        "help": "start from this model's weights, shape and tokenizer (a built-in name or a directory, e.g. an AR model)"})
    eps: float = field(default=1e-3, metadata={"help": "smallest masking rate t, in (0, 1): 1/t weights stay bounded"})
    shift: bool = field(default=False, metadata={"help": "logits at position p predict token p + 1, as in the AR "
                                                 "model (Dream / Fast-dLLM v2): keeps an --init AR model's head"})

    complementary: bool = field(default=False, metadata={
        "help": "feed each window with its mask and the complementary mask (Fast-dLLM v2 / SDAR): every maskable "
                "token trained at every step; half the distinct windows per step"})
    anneal: int = field(default=0, metadata={
        "help": "full attention only: open the causal attention of an --init AR model over this many steps "
                "(DiffuLLaMA's attention mask annealing); 0: full attention from the start"})
    infill: float = field(default=0.0, metadata={
        "help": "full attention only: share of windows laid out as a hole (span, then end-of-text pads) between a "
                "clean prefix and suffix, the layout paragen.infill decodes; 0..1"})
    infill_span: int = field(default=64, metadata={"help": "longest span of an --infill hole, in tokens"})
    infill_pad: int = field(default=64, metadata={"help": "most end-of-text tokens after an --infill hole's span"})
    infill_tail: float = field(default=0.0, metadata={
        "help": "share of --infill holes masked as a tail (every position from a point on, clean before it): "
                "the state the left-to-right prefix rule decodes in, where the model must see that the span "
                "has ended with every pad still masked; the rest are masked at random; 0..1"})
    block_tail: float = field(default=0.0, metadata={
        "help": "block-causal only: share of noised blocks masked as a tail (clean up to a point, masked from it "
                "to the block's end), the state the left-to-right prefix rule decodes in, which random masking "
                "seldom draws; the rest are masked at random; 0..1"})
    teacher: str | None = field(default=None, metadata={
        "help": "block-causal only: an AR model (same tokenizer) whose next-token distribution the first masked "
                "position of each tail-masked block learns (KL), the one position where the block model sees the "
                "AR model's context; use with --block-tail"})
    teacher_weight: float = field(default=1.0, metadata={"help": "weight of the --teacher KL beside the diffusion "
                                                                 "loss; >= 0"})
    infill_lines: float = field(default=0.0, metadata={
        "help": "share of --infill holes cut at line starts (1..3 whole lines, as code is edited and as "
                "HumanEval-Infilling cuts them); the rest start and end at any token; 0..1"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.anneal < 0:
            raise InvalidInputError(f"anneal must be >= 0 steps, got {self.anneal}")
        if not 0 <= self.infill <= 1:
            raise InvalidInputError(f"infill must be a share in [0, 1], got {self.infill}")
        for name in ("infill_lines", "infill_tail", "block_tail"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInputError(f"{name} must be a share in [0, 1], got {getattr(self, name)}")
        if self.infill and (self.infill_span < 1 or self.infill_pad < 0
                            or self.infill_span + self.infill_pad + 2 > self.seq_len):
            raise InvalidInputError(f"an infill hole (span 1..{self.infill_span}, pads 0..{self.infill_pad}) must fit "
                                    f"in a window of {self.seq_len} with a token on each side")
        if self.attention == "block_causal" and (self.anneal or self.infill):
            raise InvalidInputError("--anneal and --infill are for full attention: a block-causal model never sees "
                                    "past its block, so it has no causal attention to open and cannot see a suffix")
        if self.teacher_weight < 0:
            raise InvalidInputError(f"teacher_weight must be >= 0, got {self.teacher_weight}")
        if self.attention == "bidirectional" and self.teacher:
            raise InvalidInputError("--teacher needs a block-causal model (--block-size): a full-attention model's "
                                    "masked positions see past the AR model's context")
        if self.attention == "bidirectional" and self.block_tail:
            raise InvalidInputError("--block-tail needs a block-causal model (--block-size); for a full-attention "
                                    "model's holes, --infill-tail masks tails")
        if self.attention == "bidirectional" and self.block_size is not None:
            raise InvalidInputError("block_size needs attention='block_causal' (the CLI sets it from --block-size)")
        if self.attention == "block_causal":
            if not self.block_size or self.block_size < 1 or self.seq_len % self.block_size:
                raise InvalidInputError(
                    f"block-causal training needs a block_size dividing seq_len ({self.seq_len}), got {self.block_size}"
                )
        elif self.attention != "bidirectional":
            raise InvalidInputError(f"a diffusion model is 'bidirectional' or 'block_causal', not '{self.attention}'")
        if not 0 < self.eps < 1:
            raise InvalidInputError(f"eps must be in (0, 1), got {self.eps}")


def bd3_mask(L: int, B: int) -> torch.Tensor:
    """[1, 2L, 2L] attention over [noised window; clean window] (True = may attend).

    Noised block j sees noised block j and clean blocks < j; clean block j sees clean
    blocks <= j (block-causal); clean tokens never see noised ones.
    """
    blk = torch.arange(L) // B
    same, before = blk[:, None] == blk[None, :], blk[None, :] < blk[:, None]
    top = torch.cat([same, before], dim=1)
    bottom = torch.cat([torch.zeros_like(same), same | before], dim=1)
    return torch.cat([top, bottom], dim=0)[None]


def infill_layout(
    x0: torch.Tensor, cfg: DiffusionTrainConfig, eos_id: int, first: int, g: torch.Generator,
    line_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One window [L] laid out as a hole: prefix, span, end-of-text pads, suffix (cut to L);
    returns it and the hole's positions [L] (the only maskable ones).

    ``line_start`` [V] (True: the token's text starts a line): with it, a share
    ``cfg.infill_lines`` of holes span 1..3 whole lines (start and end on a line start), where
    the model must learn that the hole ends where the suffix's line begins."""
    L = len(x0)
    lines = _line_span(x0, cfg, first, g, line_start)
    if lines is not None:
        s, span = lines
        pads = int(torch.randint(0, min(cfg.infill_pad, L - 1 - s - span) + 1, (1,), generator=g))
    else:
        span = int(torch.randint(1, cfg.infill_span + 1, (1,), generator=g))
        pads = int(torch.randint(0, cfg.infill_pad + 1, (1,), generator=g))
        s = int(torch.randint(first + 1, L - span - pads, (1,), generator=g))  # a clean token on each side
    row = torch.cat([x0[: s + span], torch.full((pads,), eos_id, dtype=x0.dtype), x0[s + span : L - pads]])
    hole = (torch.arange(L) >= s) & (torch.arange(L) < s + span + pads)
    return row, hole


def _line_span(
    x0: torch.Tensor, cfg: DiffusionTrainConfig, first: int, g: torch.Generator, line_start: torch.Tensor | None
) -> tuple[int, int] | None:
    """(start, length) of a hole of 1..3 whole lines of x0, or None (not drawn, or no such lines)."""
    if line_start is None or not cfg.infill_lines or float(torch.rand(1, generator=g)) >= cfg.infill_lines:
        return None
    starts = line_start[x0].nonzero()[:, 0]
    starts = starts[(starts > first) & (starts < len(x0) - 1)].tolist()  # a clean token on each side
    pairs = [(a, b - a) for i, a in enumerate(starts) for b in starts[i + 1 : i + 4] if b - a <= cfg.infill_span]
    return pairs[int(torch.randint(0, len(pairs), (1,), generator=g))] if pairs else None


def line_starts(tok: Tokenizer) -> torch.Tensor:
    """[V] True where a token's text starts with a newline (with byte-level BPE, the newline and
    the next line's indentation are one token)."""
    return torch.tensor([tok.decode([i]).startswith("\n") for i in range(tok.vocab_size)])


def corrupt(
    x0: torch.Tensor, cfg: DiffusionTrainConfig, mask_id: int, g: torch.Generator, train: bool = True,
    eos_id: int = 0, line_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise a batch x0 [B, L]: returns the clean rows (laid out as holes where ``cfg.infill``
    picks them; twice each with ``cfg.complementary``) [B, L], x_t [B, L], loss weights 1/t on
    masked positions (0 elsewhere) [B, L], and the maskable positions [B, L].

    ``train=False`` (evaluation): no clean prefix, no holes, no complementary views, so the
    loss is the unconditional bound on NLL per token and compares across runs."""
    first = int(cfg.shift)  # a shifted model cannot predict position 0
    views = 2 if cfg.complementary and train else 1
    x0 = x0[: max(1, len(x0) // views)].clone()
    B, L = x0.shape
    prefix = torch.randint(first, L, (B, 1), generator=g) if train else torch.full((B, 1), first)
    maskable = torch.arange(L)[None] >= prefix
    tails = []  # infill rows whose hole is masked as a tail
    if train and cfg.infill:
        for r in (torch.rand(B, generator=g) < cfg.infill).nonzero()[:, 0].tolist():
            x0[r], maskable[r] = infill_layout(x0[r], cfg, eos_id, first, g, line_start)
            if cfg.infill_tail and float(torch.rand(1, generator=g)) < cfg.infill_tail:
                tails.append(r)
    groups = L // cfg.block_size if cfg.block_size else 1  # one t per row, or per block (BD3-LM)
    n = B * groups
    u = (torch.rand(1, generator=g) + torch.arange(n) / n) % 1  # stratified: one draw per 1/n of [0, 1)
    u = u[torch.randperm(n, generator=g)]  # so that t is not tied to the row or block index
    t = ((1 - cfg.eps) * u + cfg.eps).view(B, groups).repeat_interleave(L // groups, dim=1)
    masked = (torch.rand(B, L, generator=g) < t) & maskable
    if train and cfg.block_tail:  # a block's last share t of positions, at least one
        block = cfg.block_size
        tail = (torch.rand(B, groups, generator=g) < cfg.block_tail).repeat_interleave(block, dim=1)
        cut = ((1 - t) * block).round().clamp_max(block - 1)
        masked = torch.where(tail, maskable & (torch.arange(L) % block >= cut), masked)
    for r in tails:  # the hole's last share t of positions, at least one
        hole = maskable[r].nonzero()[:, 0]
        cut = min(int(hole[0]) + round((1 - float(t[r, 0])) * len(hole)), int(hole[-1]))
        masked[r] = maskable[r] & (torch.arange(L) >= cut)
    weight = masked / t
    if views == 2:  # the complementary view: masked where the first is clean, at rate 1 - t
        other = maskable & ~masked
        x0, masked = torch.cat([x0, x0]), torch.cat([masked, other])
        weight = torch.cat([weight, other / (1 - t).clamp_min(cfg.eps)])
        maskable = torch.cat([maskable, maskable])
    return x0, torch.where(masked, mask_id, x0), weight, maskable


def annealed_mask(L: int, step: int, anneal: int, g: torch.Generator) -> torch.Tensor | None:
    """[1, L, L] attention of full-attention training at ``step`` (True = may attend): causal
    plus each later key with probability step / anneal (DiffuLLaMA); None once fully open."""
    if step >= anneal:
        return None
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    return (causal | (torch.rand(L, L, generator=g) < step / anneal))[None]


def denoise_logits(
    model: NativeModel, xt: torch.Tensor, x0: torch.Tensor, block_size: int | None, shift: bool = False,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits [B, L, V] predicting each position of x_t (row 0 is meaningless when shifted);
    ``mask``: full attention's [1, L, L] mask while annealing (None: all visible)."""
    B, L = xt.shape
    pos = torch.arange(L).expand(B, -1)
    if block_size is None:
        h = model.hidden_states(xt, pos, mask=mask)  # a bidirectional model's default: full attention
        src = (torch.arange(L) - 1).clamp_min(0) if shift else torch.arange(L)
        return model.lm_head(h[:, src])
    h = model.hidden_states(torch.cat([xt, x0], 1), torch.cat([pos, pos], 1), mask=bd3_mask(L, block_size))
    if not shift:
        return model.lm_head(h[:, :L])  # the clean half only provides keys and values
    # p is predicted from p - 1 in its own noised block, or for a block's first position from
    # the clean half's p - 1 (the finished block before it, as at inference)
    p = torch.arange(L)
    src = torch.where(p % block_size == 0, L + p - 1, p - 1).clamp_min(0)
    return model.lm_head(h[:, src])


def tail_starts(masked: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, L] True at the first masked position of each block masked as a tail: clean before
    it in the block, masked from it to the block's end (at most one per block)."""
    B, L = masked.shape
    m = masked.view(B, L // block_size, block_size).int()
    to_end = m.flip(-1).cumprod(-1).flip(-1).bool()  # masked from here to the block's end
    clean_before = torch.cat([torch.ones_like(m[..., :1]), (1 - m).cumprod(-1)[..., :-1]], -1).bool()
    return (to_end & clean_before).view(B, L)


def teacher_kl(
    logits: torch.Tensor, x0: torch.Tensor, masked: torch.Tensor, teacher: NativeModel, cfg: DiffusionTrainConfig
) -> torch.Tensor:
    """Mean KL(p_teacher || q_model) over the tail starts of ``masked`` (0 if there are none):
    the teacher reads the clean rows x0 causally, and its logits at p - 1 predict p."""
    at = tail_starts(masked, cfg.block_size)
    at[:, 0] = False  # nothing before position 0 to predict it from
    if not at.any():
        return logits.sum() * 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        t_logits = teacher(x0, torch.arange(x0.shape[1]).expand(len(x0), -1))
    log_p = F.log_softmax(t_logits[:, :-1][at[:, 1:]].float(), -1)
    log_q = F.log_softmax(logits[at].float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def diffusion_loss(
    model: NativeModel, x0: torch.Tensor, cfg: DiffusionTrainConfig, mask_id: int, g: torch.Generator,
    train: bool = True, step: int | None = None, eos_id: int = 0, line_start: torch.Tensor | None = None,
    teacher: NativeModel | None = None,
) -> tuple[torch.Tensor, int, int]:
    """The weighted masked cross-entropy per maskable token (plus ``cfg.teacher_weight`` times
    the ``teacher``'s KL at tail starts, when given), and (correct, masked) counts;
    ``step``: the training step, for ``cfg.anneal`` (None: fully open, as evaluated)."""
    x0, xt, weight, maskable = corrupt(x0, cfg, mask_id, g, train, eos_id, line_start)
    mask = annealed_mask(x0.shape[1], step, cfg.anneal, g) if step is not None and cfg.anneal else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        logits = denoise_logits(model, xt, x0, cfg.block_size, cfg.shift, mask)
    ce = F.cross_entropy(logits.float().flatten(0, 1), x0.flatten(), reduction="none").view_as(x0)
    loss = (ce * weight).sum() / maskable.sum().clamp_min(1)
    masked = weight > 0
    if teacher is not None and cfg.teacher_weight:
        loss = loss + cfg.teacher_weight * teacher_kl(logits, x0, masked, teacher, cfg)
    correct = int((logits.argmax(-1) == x0)[masked].sum())
    return loss, correct, int(masked.sum())


@torch.no_grad()
def evaluate_diffusion(
    model: NativeModel, heldout: torch.Tensor, cfg: DiffusionTrainConfig, mask_id: int
) -> tuple[float, float]:
    """Held-out loss (the unconditional bound, per token) and accuracy on masked tokens over
    fixed windows and a fixed noise seed, so evaluations compare across steps and runs."""
    model.eval()
    g = torch.Generator().manual_seed(cfg.seed + 1)
    n = min(cfg.eval_windows, max(1, (len(heldout) - 1) // cfg.seq_len))
    starts = np.linspace(0, len(heldout) - cfg.seq_len - 1, n).astype(int)
    total, correct, masked = 0.0, 0, 0
    for chunk in np.array_split(starts, max(1, n // 16)):
        x0 = torch.stack([heldout[s : s + cfg.seq_len] for s in chunk]).long()
        loss, c, m = diffusion_loss(model, x0, cfg, mask_id, g, train=False)
        total, correct, masked = total + loss.item() * len(chunk), correct + c, masked + m
    model.train()
    return total / len(starts), correct / max(1, masked)


def model_config(cfg: DiffusionTrainConfig, tok: Tokenizer, init: NativeModel | None) -> NativeConfig:
    """The diffusion model's shape: ``SIZES[cfg.size]``, or the init model's."""
    common = dict(attention=cfg.attention, block_size=cfg.block_size, mask_token_id=tok.mask_id,
                  eos_token_id=tok.eos_id, shift=cfg.shift)
    if init is None:
        return NativeConfig(vocab_size=tok.vocab_size, max_position_embeddings=max(1024, cfg.seq_len),
                            **common, **SIZES[cfg.size])
    if init.config.vocab_size != tok.vocab_size:
        raise InvalidInputError(f"the --init model has {init.config.vocab_size} tokens and the tokenizer "
                                f"{tok.vocab_size}: use the init model's own tokenizer")
    context = max(init.config.max_position_embeddings, cfg.seq_len)
    return replace(init.config, max_position_embeddings=context, **common)


def train_diffusion(
    cfg: DiffusionTrainConfig, resume: bool = False, progress: bool = True, command: str | None = None,
    stop_at: int | None = None,
) -> dict:
    """Train, checkpoint, and write the final model directory; returns the training record.

    ``stop_at``: end this run after that many steps in all (checkpointed and saved, as a
    time budget would), so a later ``resume=True`` run continues exactly where it stopped.
    """
    out = Path(cfg.out)
    work = out.parent / f".{out.name}.work"  # checkpoints live beside, not inside, the model dir
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    init_dir = str(resolve(cfg.init)) if cfg.init else None  # a built-in name or a directory
    init = load_native(Path(init_dir)) if init_dir else None
    tok, train, heldout, split = prepare(replace(cfg, tokenizer=cfg.tokenizer or init_dir),
                                         log=say if progress else lambda message: None)
    if tok.mask_id is None or tok.eos_id is None:
        raise InvalidInputError("the tokenizer needs an end-of-text and a mask token (`paragen train tokenizer` makes both)")
    if init_dir and cfg.tokenizer and Tokenizer.from_dir(init_dir).fingerprint() != tok.fingerprint():
        raise InvalidInputError(f"--tokenizer {cfg.tokenizer} is not the --init model's tokenizer: drop --tokenizer")
    mask_id = tok.mask_id
    model = NativeModel(model_config(cfg, tok, init)).init_weights(cfg.seed)
    if init is not None:
        model.load_state_dict(init.state_dict())
    starts = line_starts(tok) if cfg.infill and cfg.infill_lines else None
    teacher = None
    if cfg.teacher:
        teacher_dir, teacher = load_teacher(cfg.teacher)
        if Tokenizer.from_dir(teacher_dir).fingerprint() != tok.fingerprint():
            raise VocabularyMismatchError(f"--teacher {cfg.teacher} has another tokenizer than the model trained")
    # 1. a batch of windows; 2. noise it; 3. the weighted masked cross-entropy (and the teacher's KL)
    loss_fn = lambda m, batch, g, step: diffusion_loss(  # noqa: E731
        m, batch[:, : cfg.seq_len], cfg, mask_id, g, step=step, eos_id=tok.eos_id, line_start=starts,
        teacher=teacher)[0]
    evaluate = lambda m: evaluate_diffusion(m, heldout, cfg, mask_id)  # noqa: E731
    state = fit(model, cfg, train, loss_fn, evaluate, work / "checkpoint.pt", resume=resume, progress=progress,
                desc=f"diffusion {cfg.init or cfg.size}", stop_at=stop_at)
    objective = "masked diffusion (MDLM/LLaDA 1/t-weighted masked cross-entropy)" + (
        f", block-causal blocks of {cfg.block_size} (BD3-LM)" if cfg.block_size else "") + (
        ", shifted (logits at p predict p + 1)" if cfg.shift else "") + (
        ", complementary masks (Fast-dLLM v2)" if cfg.complementary else "") + (
        f", causal attention opened over {cfg.anneal} steps (DiffuLLaMA)" if cfg.anneal else "") + (
        f", {cfg.infill:.0%} of windows as infilling holes (span + end-of-text pads)" if cfg.infill else "") + (
        f", {cfg.infill_lines:.0%} of holes whole lines" if cfg.infill and cfg.infill_lines else "") + (
        f", {cfg.infill_tail:.0%} of holes masked as a tail" if cfg.infill and cfg.infill_tail else "") + (
        f", {cfg.block_tail:.0%} of blocks masked as a tail" if cfg.block_tail else "") + (
        f", KL to {cfg.teacher} at tail starts (weight {cfg.teacher_weight})" if cfg.teacher else "")
    # held-out loss: an upper bound on NLL per token, unconditional; accuracy: on masked tokens
    record = training_record(cfg, model, state, evaluate(model), split, command, init_dir, objective=objective)
    save_model(model, tok, out, dtype=torch.float16, extra_files={"training.json": json.dumps(record, indent=2) + "\n"})
    return record
