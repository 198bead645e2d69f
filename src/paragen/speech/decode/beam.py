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

On the shared driver a step is one beam step, and the hypothesis is committed (with EOS)
in the step that ends the search: until then any live hypothesis may still win. One
utterance at a time (its beams are the rows of the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import align, vocab
from paragen.speech.decode.base import max_length
from paragen.strategies.base import Strategy
from paragen.trace import Call


@dataclass(frozen=True)
class BeamOptions:
    beam: int = field(default=4, metadata={"help": "hypotheses kept per step (1 = greedy)"})
    ctc_weight: float = field(default=0.0, metadata={
        "help": "lambda of joint CTC/attention decoding, in [0, 1]: the CTC prefix score's share (0: attention only)"})

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be at least 1, got {self.beam}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")


class Beam(Strategy):
    name = "beam"
    summary = "attention decoder beam search (sum of log-probabilities), one decoder call per step for all beams"
    Options = BeamOptions
    attention = "encoder-decoder"
    supports_sampling = False
    lossless = False  # not greedy: it may (and should) differ from ar

    def prefill(self, prompt: list[int]) -> None:
        """K rows of one utterance's cache (all start from EOS); only the first is live."""
        K, dev, memory = self.opts.beam, self.ctx.target.device, self.ctx.target.memory
        self.limit, self.t = max_length(memory), 0
        self.cache = self.ctx.target.new_cache(self.ctx.cache_length, batch=1)
        self.cache.select([0] * K)
        self.hyps: list[list[int]] = [[] for _ in range(K)]
        self.scores = torch.full((K,), float("-inf"), device=dev, dtype=torch.float64)
        self.scores[0] = 0.0  # all rows start identical: expand from the first only
        self.last = torch.full((K, 1), vocab.EOS, dtype=torch.long, device=dev)
        if self.opts.ctc_weight > 0:
            self.ctc = align.CTCPrefixScorer(memory.log_probs(0), vocab.EOS, never=(vocab.BLANK, vocab.MASK))
            self.r = self.ctc.initial()[None].expand(K, -1, -1)  # each hypothesis's CTC forward variables
            self.psi_prev = torch.zeros(K, dtype=torch.float64, device=dev)  # log P_ctc(prefix) of the empty prefix: 0
            self.ends = torch.full((K,), -1, dtype=torch.long, device=dev)  # each hypothesis's last character (-1: none)
        self.best, self.best_score = [], float("-inf")

    def step(self, budget: int) -> list[int]:
        """One beam step: the best hypothesis and EOS when the search ends, else nothing."""
        K, dev, lam, t = self.opts.beam, self.ctx.target.device, self.opts.ctc_weight, self.t
        # 1. one decoder call scores the next character of every live hypothesis
        logp = self.ctx.target(self.last, torch.full((K, 1), t, device=dev), cache=self.cache)[:, -1].double().log_softmax(-1)
        self.cache.commit(1)
        if lam > 0:  # the joint score's CTC part grows by psi(h) - psi(g); no model call
            psi, r_next = self.ctc.extend(self.r, self.ends)
            logp = (1 - lam) * logp + lam * (psi - self.psi_prev[:, None])
        cand = (self.scores[:, None] + logp).flatten()  # [K * V]
        top, idx = cand.topk(2 * K)
        # 2. finished hypotheses leave; the best K unfinished ones survive
        parents, tokens, new_scores = [], [], []
        for s, i in zip(top.tolist(), idx.tolist(), strict=True):
            parent, tok = divmod(i, logp.shape[-1])
            if s == float("-inf"):
                break
            if tok == vocab.EOS or t == self.limit:
                if s > self.best_score:
                    self.best, self.best_score = self.hyps[parent], s
            elif len(parents) < K:
                parents.append(parent), tokens.append(tok), new_scores.append(s)
        if self.ctx.trace:  # the step's surviving hypotheses (their last characters, as a beam's proposal)
            self.ctx.trace.lap("verify")
            self.ctx.trace.call(0, Call("beam", "target", list(tokens), accepted=list(range(len(tokens))),
                                        scores=list(new_scores),
                                        detail={"hypotheses": [self.hyps[p] + [tok] for p, tok in zip(parents, tokens)]}))
        if not parents or max(new_scores) <= self.best_score:
            return [*self.best, vocab.EOS]
        # 3. gather the survivors' cache rows from their parents (rows beyond the survivors stay dead)
        n = len(parents)
        src = parents + [parents[0]] * (K - n)
        self.cache.select(src)
        self.hyps = [self.hyps[p] + [tok] for p, tok in zip(parents, tokens, strict=True)] + [[] for _ in range(K - n)]
        self.scores = torch.tensor(new_scores + [float("-inf")] * (K - n), device=dev, dtype=torch.float64)
        self.last = torch.tensor(tokens + [vocab.EOS] * (K - n), device=dev)[:, None]
        if lam > 0:
            tok_t = torch.tensor(tokens + tokens[:1] * (K - n), device=dev)
            src_t = torch.tensor(src, device=dev)
            self.r = r_next[src_t, :, :, tok_t]  # [K, T, 2]: each survivor's forward variables
            self.psi_prev = psi[src_t, tok_t]
            self.ends = tok_t
        self.t += 1
        return []
