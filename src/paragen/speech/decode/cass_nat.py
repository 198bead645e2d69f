"""``cass_nat``: CASS-NAT's single-step NAR decoder (Fan et al. 2021, arXiv:2010.14725; journal
version arXiv:2304.07611).

The CTC best path gives the number of tokens and each token's span of encoder frames
(``align.segments``); a one-layer attention pools each span into a token-level acoustic
embedding (TAE), which takes the place of the word embedding, so the NAR decoder emits every
token in one call. Trained on Viterbi alignments of the reference (``paragen.speech.train``).

Error-based alignment sampling (``samples > 1``): the CTC best path is least reliable where
its frame posterior is low, so frames whose top probability is under ``threshold`` get their
label drawn from the frame's CTC posterior instead; the best path and ``samples - 1`` sampled
alignments are decoded in one batched NAR call, and one batched AR call scores every
candidate (teacher-forced log-likelihood, EOS included) to pick the best (``rescore=ar``) or
the NAR decoder's own confidence picks it with no AR call (``rescore=nar``). The papers
describe the sampling at this level; the threshold rule and the AR rescoring here are our
reading of it, not a transcription of their code.

A batch of utterances shares each call: one NAR call over every row's alignments, then one
AR call scoring every candidate of the rows that sampled (rows and frames padded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from paragen.speech import align, vocab
from paragen.speech.decode.base import NARStrategy, ctc_best_path
from paragen.speech.model import Encoded
from paragen.trace import Call


@dataclass(frozen=True)
class CassNatOptions:
    samples: int = field(default=1, metadata={"help": "alignments decoded: 1 = the CTC best path only; more = "
                                              "error-based alignment sampling"})
    threshold: float = field(default=0.9, metadata={"help": "frames whose top CTC probability is below this are resampled"})
    rescore: str = field(default="ar", metadata={"help": "pick among sampled alignments by the AR decoder's likelihood "
                                                 "(one more call) or the NAR decoder's confidence",
                                                 "choices": ("ar", "nar")})
    seed: int = field(default=0, metadata={"help": "seed of the alignment sampling"})

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.rescore not in ("ar", "nar"):
            raise ValueError(f"rescore must be ar or nar, got {self.rescore!r}")


@dataclass
class Row:
    """One utterance: its alignments' token segments [N, L, S] and token counts [N]; after the
    NAR call its candidates; ``best`` once chosen."""

    segments: torch.Tensor
    n_tok: torch.Tensor
    candidates: list[list[int]] = field(default_factory=list)
    best: list[int] | None = None
    extra: dict = field(default_factory=dict)


def sample_alignments(enc: Encoded, options: CassNatOptions, row: int = 0) -> torch.Tensor:
    """[N, S] frame labels of one row: the best path, then up to ``samples - 1`` distinct resampled ones."""
    labels, conf = ctc_best_path(enc, row)
    out = [labels]
    if options.samples > 1:
        g = torch.Generator().manual_seed(options.seed)
        p = enc.ctc_logits[row, : len(labels)].float().softmax(-1).cpu()
        unsure = (conf < options.threshold).cpu()
        if unsure.any():
            draws = torch.multinomial(p[unsure], options.samples - 1, replacement=True, generator=g)  # [U, N-1]
            for j in range(options.samples - 1):
                alt = labels.cpu().clone()
                alt[unsure] = draws[:, j]
                if not any(torch.equal(alt, o.cpu()) for o in out):
                    out.append(alt.to(labels.device))
    return torch.stack(out)


def teacher_forced(candidates: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs (EOS, then the characters) and targets (the characters, then EOS) [N, L + 1]."""
    L = max(len(c) for c in candidates) + 1
    inp = torch.full((len(candidates), L), vocab.EOS, dtype=torch.long, device=device)
    tgt = torch.full((len(candidates), L), vocab.EOS, dtype=torch.long, device=device)
    for i, c in enumerate(candidates):
        inp[i, 1 : len(c) + 1] = torch.tensor(c, dtype=torch.long)
        tgt[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    return inp, tgt


class CassNat(NARStrategy):
    name = "cass_nat"
    summary = "CASS-NAT: token acoustic embeddings from the CTC alignment, all characters in one NAR call"
    Options = CassNatOptions

    def start(self, row: int) -> Row:
        alignments = sample_alignments(self.memory, self.opts, row)  # [N, S]
        N, S = alignments.shape
        _, seg = align.segments(alignments, torch.ones(N, S, dtype=torch.bool, device=alignments.device))
        n_tok = seg.any(-1).sum(-1)
        return Row(seg, n_tok, best=[] if int(n_tok.max()) == 0 else None, extra={"alignments": N})

    def finished(self, row: Row) -> bool:
        return row.best is not None

    def finish(self, b: int) -> list[int]:
        return [*self.rows[b].best, vocab.EOS]

    def advance(self) -> list[list[int]]:
        """The NAR call, or (rows with sampled alignments, ``rescore=ar``) the AR rescoring call."""
        if self.rows[0].candidates:  # every row left is waiting for its AR rescoring
            self.rescore()
        else:
            self.decode_alignments()
        return [self.finish(b) if self.finished(r) else [] for b, r in enumerate(self.rows)]

    def decode_alignments(self) -> None:
        """1. every alignment of every row in one NAR call (segments padded to the longest row);
        2. each row's candidates; a row with one alignment, or rescored by the NAR decoder's
        confidence, is decided."""
        S = self.memory.memory.shape[1]
        L = max(r.segments.shape[1] for r in self.rows)
        seg = torch.cat([F.pad(r.segments, (0, S - r.segments.shape[2], 0, L - r.segments.shape[1])) for r in self.rows])
        owners = [b for b, r in enumerate(self.rows) for _ in range(len(r.n_tok))]
        logits = self.ctx.target.nar_tae(seg, self.memory.select(owners)).float()
        logits[..., : vocab.MASK + 1] = float("-inf")
        p, y = logits.log_softmax(-1).max(-1)  # [sum N, L]
        if self.ctx.trace:
            self.ctx.trace.lap("verify")
        first = 0
        for b, r in enumerate(self.rows):
            N = len(r.n_tok)
            r.candidates = [y[first + i, : int(r.n_tok[i])].tolist() for i in range(N)]
            if N == 1:
                r.best = r.candidates[0]
            elif self.opts.rescore == "nar":
                score = torch.stack([p[first + i, : int(r.n_tok[i])].sum() for i in range(N)])
                r.best = r.candidates[int(score.argmax())]
            if self.ctx.trace:  # the best path's tokens, each with its frame span and the NAR decoder's confidence
                n = int(r.n_tok[0])
                spans = [[int(f[0]), int(f[-1]) + 1] for f in (r.segments[0, j].nonzero()[:, 0] for j in range(n))]
                self.ctx.trace.call(b, Call("nar", "ctc", r.candidates[0], positions=list(range(n)),
                                            scores=p[first, :n].exp().tolist(), accepted=list(range(n)),
                                            detail={"spans": spans, "candidates": r.candidates}))
            first += N

    def rescore(self) -> None:
        """Teacher-forced AR log-likelihood of every candidate (EOS included), all rows in one
        decoder call; each row keeps its most likely candidate."""
        candidates = [c for r in self.rows for c in r.candidates]
        owners = [b for b, r in enumerate(self.rows) for _ in r.candidates]
        inp, tgt = teacher_forced(candidates, self.ctx.target.device)
        N, L = inp.shape
        lp = self.ctx.target.score(inp, torch.arange(L, device=inp.device).expand(N, -1), self.memory.select(owners))
        tok_lp = lp.float().log_softmax(-1).gather(-1, tgt[..., None])[..., 0]
        keep = torch.arange(L, device=inp.device)[None] <= torch.tensor([len(c) for c in candidates], device=inp.device)[:, None]
        scores = (tok_lp * keep).sum(-1)
        if self.ctx.trace:
            self.ctx.trace.lap("verify")
        first = 0
        for b, r in enumerate(self.rows):
            score = scores[first : first + len(r.candidates)]
            r.best = r.candidates[int(score.argmax())]
            if self.ctx.trace:
                self.ctx.trace.call(b, Call("rescore", "target", detail={"scores": score.tolist()}))
            first += len(r.candidates)
