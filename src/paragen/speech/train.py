"""``paragen train speech``: the joint CTC / attention / NAR objective on paragen's training loop.

Loss (ESPnet-style hybrid, Watanabe et al. 2017): ``ctc_weight * CTC + (1 - ctc_weight) *
attention CE`` (label-smoothed), plus ``nar_weight`` times the two NAR decoder losses on the
same encoder: CMLM (Ghazvininejad et al. 2019: mask a uniform number of target tokens,
predict them; on the CMLM decoder, with each token's TAE, when the model has one, else on
the NAR decoder) and CASS-NAT (TAEs from the Viterbi alignment of the target under the
current CTC head, predict every token; Fan et al. 2021). SpecAugment-style masks on the input.
With ``distill`` the NAR side (CTC, CMLM, CASS-NAT) learns an AR teacher's transcripts
(``paragen.speech.distill``) and the AR decoder the references.

The loop (``paragen.train.loop.fit``) samples windows of a 1-D sequence; here the sequence
is the utterance ids sorted by length, so a window of ``batch`` neighbours is a
length-bucketed batch with little padding.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from paragen.models.io import atomic_directory, resolve
from paragen.speech import align, vocab
from paragen.speech.data import SpeechSplit, load_split
from paragen.speech.distill import teacher_texts
from paragen.speech.metrics import error_rate
from paragen.speech.model import Encoded, SpeechConfig, SpeechModel, load_speech_model, save_speech_model
from paragen.train.loop import fit, training_record


@dataclass(frozen=True)
class SpeechTrainConfig:
    data: str = field(default="", metadata={"help": "directory from `paragen data speech`"})
    out: str = field(default="", metadata={"help": "output model directory"})
    steps: int = field(default=20000, metadata={"help": "optimizer steps (the schedule's length)"})
    minutes: float | None = field(default=None, metadata={"help": "wall-clock budget; the schedule follows it"})
    batch: int = field(default=24, metadata={"help": "utterances per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    warmup: int = field(default=400, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    clip: float = field(default=5.0, metadata={"help": "gradient norm clip"})
    ctc_weight: float = field(default=0.3, metadata={"help": "CTC share of the CTC + attention loss"})
    nar_weight: float = field(default=0.5, metadata={"help": "weight of each NAR decoder loss"})
    label_smoothing: float = field(default=0.1, metadata={"help": "attention decoder label smoothing"})
    spec_augment: bool = field(default=True, metadata={"help": "time and frequency masks on the training input"})
    d_model: int = field(default=128, metadata={"help": "model width"})
    encoder_layers: int = field(default=6, metadata={"help": "encoder layers"})
    decoder_layers: int = field(default=2, metadata={"help": "AR decoder layers"})
    nar_layers: int = field(default=2, metadata={"help": "NAR decoder layers"})
    cmlm_layers: int = field(default=0, metadata={
        "help": "CMLM decoder layers (mask-predict's own decoder; 0: none); with --init from a model without "
        "one, it is added, started from the NAR decoder's weights"})
    distill: bool = field(default=False, metadata={
        "help": "sequence-level knowledge distillation: CTC and the NAR decoders learn the teacher's transcripts "
        "(DATA/train.teacher.jsonl from `paragen data speech-distill`), the AR decoder the references"})
    eval_every: int = field(default=500, metadata={"help": "held-out evaluation every N steps"})
    eval_utterances: int = field(default=100, metadata={"help": "held-out utterances per evaluation"})
    checkpoint_every: int = field(default=200, metadata={"help": "checkpoint every N steps"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    init: str | None = field(default=None, metadata={
        "help": "start from this speech model (built-in name or directory): its weights, shape and feature "
        "normalisation replace --d-model and the layer counts (--cmlm-layers adds a CMLM decoder to a model "
        "without one); the optimiser and schedule start afresh"})

    # paragen.train.loop.fit draws cfg.batch_size windows of cfg.seq_len + 1 ids: one window = one batch
    @property
    def batch_size(self) -> int:
        return 1

    @property
    def seq_len(self) -> int:
        return self.batch - 1


def pad_features(split: SpeechSplit, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """features [B, T_max, 80] zero-padded and lengths [B] of utterances ``ids``."""
    items = [split.item(i) for i in ids]
    lengths = torch.tensor([len(x) for x in items])
    return torch.nn.utils.rnn.pad_sequence(items, batch_first=True), lengths


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, fill: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Two frequency masks (<= 10 bands) and two time masks (<= 5% of frames each) per row (Park et al. 2019)."""
    x = x.clone()
    B, T, Fq = x.shape
    for b in range(B):
        for _ in range(2):
            w, f0 = int(torch.randint(0, 11, (1,), generator=g)), int(torch.randint(0, Fq - 10, (1,), generator=g))
            x[b, :, f0 : f0 + w] = fill[f0 : f0 + w]
            tw = int(torch.randint(0, max(1, int(lengths[b]) // 20) + 1, (1,), generator=g))
            t0 = int(torch.randint(0, max(1, int(lengths[b]) - tw), (1,), generator=g))
            x[b, t0 : t0 + tw] = fill
    return x


def targets_of(split: SpeechSplit, ids: list[int], texts: list[str] | None = None) -> list[list[int]]:
    """The character ids of utterances ``ids``: their references, or their ``texts`` (one per utterance of the split)."""
    return [vocab.encode(split.rows[i]["text"] if texts is None else texts[i]) for i in ids]


def mask_uniformly(ys: list[list[int]], g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CMLM's training inputs: each target with k ~ U{1..len} random positions masked
    [B, L] (padding EOS), and the masked positions' targets [B, L] (-100 elsewhere)."""
    L = max(1, max(len(y) for y in ys))
    toks = torch.full((len(ys), L), vocab.EOS, dtype=torch.long)
    tgt = torch.full((len(ys), L), -100, dtype=torch.long)
    for b, y in enumerate(ys):
        if not y:
            continue
        k = int(torch.randint(1, len(y) + 1, (1,), generator=g))
        pos = torch.randperm(len(y), generator=g)[:k]
        toks[b, : len(y)] = torch.tensor(y)
        toks[b, pos] = vocab.MASK
        tgt[b, pos] = torch.tensor(y)[pos]
    return toks, tgt


def losses(model: SpeechModel, enc: Encoded, ys: list[list[int]], cfg: SpeechTrainConfig, g: torch.Generator,
           nar_ys: list[list[int]] | None = None) -> dict:
    """Each loss of the joint objective for one encoded batch and its targets ``ys`` (the NAR
    side's ``nar_ys`` when distilling, else ``ys``)."""
    nar_ys = ys if nar_ys is None else nar_ys
    B, dev = len(ys), enc.memory.device
    lp = enc.ctc_logits.float().log_softmax(-1)
    flat = torch.tensor([t for y in nar_ys for t in y], dtype=torch.long)
    ylen = torch.tensor([len(y) for y in nar_ys])
    ctc = F.ctc_loss(lp.transpose(0, 1), flat, enc.lengths.cpu(), ylen, blank=vocab.BLANK, zero_infinity=True)
    # AR decoder: input EOS y1..yL, target y1..yL EOS
    L = max(len(y) for y in ys) + 1
    inp = torch.full((B, L), vocab.EOS, dtype=torch.long)
    tgt = torch.full((B, L), -100, dtype=torch.long)
    for b, y in enumerate(ys):
        inp[b, 1 : len(y) + 1] = torch.tensor(y)
        tgt[b, : len(y) + 1] = torch.tensor([*y, vocab.EOS])
    logits = model.decode(inp.to(dev), torch.arange(L, device=dev).expand(B, -1), enc)
    att = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten().to(dev), ignore_index=-100,
                          label_smoothing=cfg.label_smoothing)
    # CASS-NAT: TAEs from the Viterbi alignment of the target under the current CTC posteriors
    with torch.no_grad():
        labels = align.viterbi(lp.detach(), enc.lengths.cpu(), nar_ys)
    toks_v, seg = align.segments(labels, ~enc.pad.cpu())
    ctgt = torch.full(seg.shape[:2], -100, dtype=torch.long)
    aligned = [t == y for t, y in zip(toks_v, nar_ys)]  # an infeasible row (too few frames) aligns to nothing
    for b, t in enumerate(toks_v):
        if aligned[b]:
            ctgt[b, : len(t)] = torch.tensor(t)
    cass = F.cross_entropy(model.nar_tae(seg.to(dev), enc).float().flatten(0, 1), ctgt.flatten().to(dev), ignore_index=-100)
    # CMLM: mask k ~ U{1..len} random positions of each target, predict them
    toks, mtgt = mask_uniformly(nar_ys, g)
    if model.config.cmlm_layers:  # its own decoder, each token with its TAE (aligned rows only)
        mtgt[[not a for a in aligned]] = -100
        Lt = toks.shape[1]
        seg_t = F.pad(seg, (0, 0, 0, max(0, Lt - seg.shape[1])))[:, :Lt]
        logits = model.cmlm_logits(toks.to(dev), seg_t.to(dev), enc)
    else:
        pad = torch.arange(toks.shape[1])[None] >= ylen[:, None]
        logits = model.nar_tokens(toks.to(dev), enc, pad.to(dev))
    cmlm = F.cross_entropy(logits.float().flatten(0, 1), mtgt.flatten().to(dev), ignore_index=-100)
    return {"ctc": ctc, "att": att, "cmlm": cmlm, "cass": cass}


def total_loss(parts: dict, cfg: SpeechTrainConfig) -> torch.Tensor:
    return (cfg.ctc_weight * parts["ctc"] + (1 - cfg.ctc_weight) * parts["att"]
            + cfg.nar_weight * (parts["cmlm"] + parts["cass"]))


@torch.no_grad()
def greedy_batch(model: SpeechModel, enc: Encoded, max_len: int) -> list[list[int]]:
    """Batched AR greedy decoding with the KV cache (for held-out evaluation during training)."""
    B, dev = enc.memory.shape[0], enc.memory.device
    cache = model.new_cache(B, max_len + 1)
    tok = torch.full((B, 1), vocab.EOS, dtype=torch.long, device=dev)
    out, done = [[] for _ in range(B)], torch.zeros(B, dtype=torch.bool)
    for t in range(max_len):
        nxt = model.decode(tok, torch.full((B, 1), t, device=dev), enc, cache)[:, -1].argmax(-1)
        cache.commit(1)
        for b in range(B):
            if not done[b]:
                if int(nxt[b]) == vocab.EOS:
                    done[b] = True
                else:
                    out[b].append(int(nxt[b]))
        if done.all():
            break
        tok = nxt[:, None]
    return out


@torch.no_grad()
def evaluate(model: SpeechModel, sets: dict[str, SpeechSplit], cfg: SpeechTrainConfig, log=tqdm.write) -> tuple[float, float]:
    """Held-out joint loss and 1 - CER of AR greedy, over the first ``eval_utterances`` of each set;
    ``log`` hears CER and WER of CTC greedy and AR greedy per set."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    total, n, cer_sum, lines = 0.0, 0, 0.0, []
    for name, split in sets.items():
        ids = list(range(min(cfg.eval_utterances, len(split))))
        refs, ctc_h, ar_h = [], [], []
        for start in range(0, len(ids), 25):
            chunk = ids[start : start + 25]
            x, lengths = pad_features(split, chunk)
            enc = model.encode(x, lengths)
            ys = targets_of(split, chunk)
            total += total_loss(losses(model, enc, ys, cfg, g), cfg).item() * len(chunk)
            n += len(chunk)
            best = enc.ctc_logits.argmax(-1)
            ctc_h += [vocab.decode(align.collapse(best[b, : int(enc.lengths[b])].tolist())) for b in range(len(chunk))]
            ar_h += [vocab.decode(y) for y in greedy_batch(model, enc, max(len(y) for y in ys) * 2 + 10)]
            refs += [split.rows[i]["text"] for i in chunk]
        cer = error_rate(ar_h, refs, "char")
        cer_sum += cer
        lines.append(f"{name}: ctc CER {error_rate(ctc_h, refs, 'char'):.3f} WER {error_rate(ctc_h, refs, 'word'):.3f}, "
                     f"ar CER {cer:.3f} WER {error_rate(ar_h, refs, 'word'):.3f}")
    log("  " + "; ".join(lines))
    model.train()
    return total / max(n, 1), max(0.0, 1 - cer_sum / len(sets))


def feature_stats(split: SpeechSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """Global per-band mean and std of the training features (CMVN)."""
    f = split.features.float()
    return f.mean(0), f.std(0).clamp_min(1e-3)


def train_speech(cfg: SpeechTrainConfig, resume: bool = False, progress: bool = True, command: str | None = None,
                 stop_at: int | None = None) -> dict:
    """Train, checkpoint, and write the model directory (config.json, model.safetensors, training.json)."""
    out = Path(cfg.out)
    work = out.parent / f".{out.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    train = load_split(cfg.data, "train")
    sets = {name: load_split(cfg.data, name) for name in ("heldout", "heldout_voice")}
    teacher = teacher_texts(cfg.data, [r["id"] for r in train.rows]) if cfg.distill else None
    if cfg.init:
        # Continue a model's training on new data or a new budget (fp16 weights widen exactly to fp32).
        model = load_speech_model(resolve(cfg.init)).train()
        if cfg.cmlm_layers and not model.config.cmlm_layers:
            model = model.add_cmlm(cfg.cmlm_layers)
    else:
        mconf = SpeechConfig(d_model=cfg.d_model, encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
                             nar_layers=cfg.nar_layers, cmlm_layers=cfg.cmlm_layers, ff=4 * cfg.d_model)
        model = SpeechModel(mconf)
        model.feat_mean, model.feat_std = feature_stats(train)
    frames = (train.offsets[1:] - train.offsets[:-1])
    order = torch.argsort(frames, stable=True)  # ids sorted by length: a window is a length bucket

    def loss_fn(m: SpeechModel, batch: torch.Tensor, g: torch.Generator, step: int) -> torch.Tensor:
        ids = batch[0].tolist()
        x, lengths = pad_features(train, ids)
        if cfg.spec_augment:
            x = spec_augment(x, lengths, m.feat_mean, g)
        nar_ys = targets_of(train, ids, teacher) if teacher is not None else None
        return total_loss(losses(m, m.encode(x, lengths), targets_of(train, ids), cfg, g, nar_ys), cfg)

    state = fit(model, cfg, order, loss_fn, lambda m: evaluate(m, sets, cfg), work / "checkpoint.pt", resume=resume,
                progress=progress, desc="train speech", stop_at=stop_at)
    final: dict[str, str] = {}
    heldout = evaluate(model, sets, cfg, log=lambda line: final.setdefault("heldout", line.strip()))
    manifest = json.loads((Path(cfg.data) / "manifest.json").read_text())
    record = training_record(cfg, model, state, heldout, {"data": cfg.data, "data_command": manifest["command"],
                                                            "splits": manifest["splits"]}, command,
                             init_dir=resolve(cfg.init) if cfg.init else None, heldout_greedy=final.get("heldout", ""))
    with atomic_directory(out) as tmp:
        save_speech_model(model, tmp, extra_files={"training.json": json.dumps(record, indent=2) + "\n"})
    return record
