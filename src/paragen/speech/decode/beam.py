"""``beam``: beam search over the attention decoder (what ASR users expect beside greedy).

The beams are the rows of one batched KV cache; after each step the surviving hypotheses'
rows are gathered from their parents' (a hypothesis's cache is its parent's plus one slot).
Score: the sum of log-probabilities, EOS included; a finished hypothesis leaves the beam,
and the search stops when no live one can beat the best finished one (scores only fall).

``ctc_weight`` = lambda > 0: joint CTC/attention decoding (Watanabe et al. 2017, sec. 4.3;
ESPnet's default for hybrid models): a hypothesis h scores (1 - lambda) log p_att(h) +
lambda log p_ctc(h), the second its CTC prefix score (``align.CTCPrefixScorer``), computed
from the encoder's CTC head for every candidate character at once (no extra model call).
The CTC term keeps the hypothesis monotonically aligned to the audio, which a small
attention decoder alone loses: once it errs it may skip or repeat words, where the prefix
score of a skipped or repeated word is tiny. ``beam=1`` is greedy joint decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import CountedSpeechModel, max_length
from paragen.speech.model import Encoded
from paragen.trace import Call, Recorder

NAME = "beam"
SUMMARY = "attention decoder beam search (sum of log-probabilities), one decoder call per step for all beams"
LOSSLESS = False  # not greedy: it may (and should) differ from ar


@dataclass(frozen=True)
class Options:
    beam: int = field(default=4, metadata={"help": "hypotheses kept per step (1 = greedy)"})
    ctc_weight: float = field(default=0.0, metadata={
        "help": "lambda of joint CTC/attention decoding, in [0, 1]: the CTC prefix score's share (0: attention only)"})

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be at least 1, got {self.beam}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")


@torch.no_grad()
def decode(model: CountedSpeechModel, enc: Encoded, options: Options, trace: Recorder | None = None) -> list[int]:
    """Best hypothesis of a beam search on one encoded utterance; ``trace``: each step's survivors."""
    K, limit, dev, lam = options.beam, max_length(enc), model.device, options.ctc_weight
    rows = Encoded(enc.memory.expand(K, -1, -1), enc.pad.expand(K, -1), enc.ctc_logits.expand(K, -1, -1))
    cache = model.new_cache(K, limit + 1)
    hyps: list[list[int]] = [[] for _ in range(K)]
    scores = torch.full((K,), float("-inf"), device=dev, dtype=torch.float64)
    scores[0] = 0.0  # all rows start identical: expand from the first only
    last = torch.full((K, 1), vocab.EOS, dtype=torch.long, device=dev)
    if lam > 0:
        ctc = align.CTCPrefixScorer(enc.ctc_logits[0, : int(enc.lengths[0])].float().log_softmax(-1), vocab.EOS,
                                    never=(vocab.BLANK, vocab.MASK))
        r = ctc.initial()[None].expand(K, -1, -1)  # each hypothesis's CTC forward variables
        psi_prev = torch.zeros(K, dtype=torch.float64, device=dev)  # log P_ctc(prefix) of the empty prefix: 0
        ends = torch.full((K,), -1, dtype=torch.long, device=dev)  # each hypothesis's last character (-1: none)
    best, best_score = [], float("-inf")
    for t in range(limit + 1):
        if trace:
            trace.begin([0])
        # 1. one decoder call scores the next character of every live hypothesis
        logp = model.decode(last, torch.full((K, 1), t, device=dev), rows, cache)[:, -1].double().log_softmax(-1)
        cache.commit(1)
        if lam > 0:  # the joint score's CTC part grows by psi(h) - psi(g); no model call
            psi, r_next = ctc.extend(r, ends)
            logp = (1 - lam) * logp + lam * (psi - psi_prev[:, None])
        cand = (scores[:, None] + logp).flatten()  # [K * V]
        top, idx = cand.topk(2 * K)
        # 2. finished hypotheses leave; the best K unfinished ones survive
        parents, tokens, new_scores = [], [], []
        for s, i in zip(top.tolist(), idx.tolist(), strict=True):
            parent, tok = divmod(i, logp.shape[-1])
            if s == float("-inf"):
                break
            if tok == vocab.EOS or t == limit:
                if s > best_score:
                    best, best_score = hyps[parent], s
            elif len(parents) < K:
                parents.append(parent), tokens.append(tok), new_scores.append(s)
        if trace:  # the step's surviving hypotheses (their last characters, as a beam's proposal)
            trace.lap("verify")
            trace.step(Call("beam", "target", list(tokens), accepted=list(range(len(tokens))), scores=list(new_scores),
                            detail={"hypotheses": [hyps[p] + [tok] for p, tok in zip(parents, tokens)]}), [])
        if not parents or max(new_scores) <= best_score:
            break
        # 3. gather the survivors' cache rows from their parents (rows beyond the survivors stay dead)
        n = len(parents)
        src = torch.tensor(parents + [parents[0]] * (K - n), device=dev)
        for layer in range(len(cache.k)):
            cache.k[layer] = cache.k[layer].index_select(0, src)
            cache.v[layer] = cache.v[layer].index_select(0, src)
        hyps = [hyps[p] + [tok] for p, tok in zip(parents, tokens, strict=True)] + [[] for _ in range(K - n)]
        scores = torch.tensor(new_scores + [float("-inf")] * (K - n), device=dev, dtype=torch.float64)
        last = torch.tensor(tokens + [vocab.EOS] * (K - n), device=dev)[:, None]
        if lam > 0:
            tok_t = torch.tensor(tokens + tokens[:1] * (K - n), device=dev)
            r = r_next[src, :, :, tok_t]  # [K, T, 2]: each survivor's forward variables
            psi_prev = psi[src, tok_t]
            ends = tok_t
    if trace:
        trace.settle(best)
    return best
