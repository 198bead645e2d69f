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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import CountedSpeechModel, ctc_best_path
from paragen.speech.model import Encoded
from paragen.trace import Call, Recorder

NAME = "cass_nat"
SUMMARY = "CASS-NAT: token acoustic embeddings from the CTC alignment, all characters in one NAR call"
LOSSLESS = False


@dataclass(frozen=True)
class Options:
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


def sample_alignments(enc: Encoded, options: Options) -> torch.Tensor:
    """[N, S] frame labels: the best path, then up to ``samples - 1`` distinct resampled ones."""
    labels, conf = ctc_best_path(enc)
    out = [labels]
    if options.samples > 1:
        g = torch.Generator().manual_seed(options.seed)
        p = enc.ctc_logits[0, : len(labels)].float().softmax(-1).cpu()
        unsure = (conf < options.threshold).cpu()
        if unsure.any():
            draws = torch.multinomial(p[unsure], options.samples - 1, replacement=True, generator=g)  # [U, N-1]
            for j in range(options.samples - 1):
                alt = labels.cpu().clone()
                alt[unsure] = draws[:, j]
                if not any(torch.equal(alt, o.cpu()) for o in out):
                    out.append(alt.to(labels.device))
    return torch.stack(out)


@torch.no_grad()
def ar_scores(model: CountedSpeechModel, enc: Encoded, candidates: list[list[int]]) -> torch.Tensor:
    """Teacher-forced AR log-likelihood of each candidate (EOS included), all in one decoder call."""
    N, dev = len(candidates), model.device
    L = max(len(c) for c in candidates) + 1
    inp = torch.full((N, L), vocab.EOS, dtype=torch.long, device=dev)
    tgt = torch.full((N, L), vocab.EOS, dtype=torch.long, device=dev)
    for i, c in enumerate(candidates):
        inp[i, 1 : len(c) + 1] = torch.tensor(c, dtype=torch.long)
        tgt[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    rows = Encoded(enc.memory.expand(N, -1, -1), enc.pad.expand(N, -1), enc.ctc_logits.expand(N, -1, -1))
    lp = model.decode(inp, torch.arange(L, device=dev).expand(N, -1), rows).float().log_softmax(-1)
    tok_lp = lp.gather(-1, tgt[..., None])[..., 0]
    keep = torch.arange(L, device=dev)[None] <= torch.tensor([len(c) for c in candidates], device=dev)[:, None]
    return (tok_lp * keep).sum(-1)


@torch.no_grad()
def decode(model: CountedSpeechModel, enc: Encoded, options: Options,
           trace: Recorder | None = None) -> tuple[list[int], dict]:
    """CASS-NAT transcription of one encoded utterance, and how many alignments it decoded."""
    if trace:
        trace.begin([0])
    alignments = sample_alignments(enc, options)  # [N, S]
    N, S = alignments.shape
    _, seg = align.segments(alignments, torch.ones(N, S, dtype=torch.bool, device=alignments.device))
    n_tok = seg.any(-1).sum(-1)
    if int(n_tok.max()) == 0:
        return [], {"alignments": N}
    rows = Encoded(enc.memory[:, :S].expand(N, -1, -1), enc.pad[:, :S].expand(N, -1), enc.ctc_logits[:, :S].expand(N, -1, -1))
    logits = model.nar_tae(seg, rows).float()
    logits[..., : vocab.MASK + 1] = float("-inf")
    p, y = logits.log_softmax(-1).max(-1)  # [N, L]
    candidates = [y[i, : int(n_tok[i])].tolist() for i in range(N)]
    if trace:  # the best path's tokens, each with its frame span and the NAR decoder's confidence
        trace.lap("verify")
        n = int(n_tok[0])
        spans = [[int(f[0]), int(f[-1]) + 1] for f in (seg[0, j].nonzero()[:, 0] for j in range(n))]
        trace.step(Call("nar", "ctc", candidates[0], positions=list(range(n)), scores=p[0, :n].exp().tolist(),
                        accepted=list(range(n)), detail={"spans": spans, "candidates": candidates}),
                   candidates[0] if N == 1 else [])
    if N == 1:
        return candidates[0], {"alignments": 1}
    if options.rescore == "ar":
        if trace:
            trace.begin([0])
        score = ar_scores(model, enc, candidates)
        if trace:
            trace.lap("verify")
            trace.step(Call("rescore", "target", detail={"scores": score.tolist()}), [])
    else:
        score = torch.stack([p[i, : int(n_tok[i])].sum() for i in range(N)])
    best = candidates[int(score.argmax())]
    if trace:
        trace.settle(best)
    return best, {"alignments": N}
