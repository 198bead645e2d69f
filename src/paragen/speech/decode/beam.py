"""``beam``: beam search over the attention decoder (what ASR users expect beside greedy).

The beams are the rows of one batched KV cache; after each step the surviving hypotheses'
rows are gathered from their parents' (a hypothesis's cache is its parent's plus one slot).
Score: the sum of log-probabilities, EOS included; a finished hypothesis leaves the beam,
and the search stops when no live one can beat the best finished one (scores only fall).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.speech import vocab
from paragen.speech.decode.base import CountedSpeechModel, max_length
from paragen.speech.model import Encoded

NAME = "beam"
SUMMARY = "attention decoder beam search (sum of log-probabilities), one decoder call per step for all beams"
LOSSLESS = False  # not greedy: it may (and should) differ from ar


@dataclass(frozen=True)
class Options:
    beam: int = field(default=4, metadata={"help": "hypotheses kept per step (1 = greedy)"})

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be at least 1, got {self.beam}")


@torch.no_grad()
def decode(model: CountedSpeechModel, enc: Encoded, options: Options) -> list[int]:
    """Best hypothesis of a beam search on one encoded utterance."""
    K, limit, dev = options.beam, max_length(enc), model.device
    rows = Encoded(enc.memory.expand(K, -1, -1), enc.pad.expand(K, -1), enc.ctc_logits.expand(K, -1, -1))
    cache = model.new_cache(K, limit + 1)
    hyps: list[list[int]] = [[] for _ in range(K)]
    scores = torch.full((K,), float("-inf"), device=dev)
    scores[0] = 0.0  # all rows start identical: expand from the first only
    last = torch.full((K, 1), vocab.EOS, dtype=torch.long, device=dev)
    best, best_score = [], float("-inf")
    for t in range(limit + 1):
        # 1. one decoder call scores the next character of every live hypothesis
        logp = model.decode(last, torch.full((K, 1), t, device=dev), rows, cache)[:, -1].float().log_softmax(-1)
        cache.commit(1)
        cand = (scores[:, None] + logp).flatten()  # [K * V]
        top, idx = cand.topk(2 * K)
        # 2. finished hypotheses leave; the best K unfinished ones survive
        parents, tokens, new_scores = [], [], []
        for s, i in zip(top.tolist(), idx.tolist(), strict=True):
            parent, tok = divmod(i, logp.shape[-1])
            if tok == vocab.EOS or t == limit:
                if s > best_score:
                    best, best_score = hyps[parent], s
            elif len(parents) < K:
                parents.append(parent), tokens.append(tok), new_scores.append(s)
        if not parents or max(new_scores) <= best_score:
            break
        # 3. gather the survivors' cache rows from their parents (rows beyond the survivors stay dead)
        n = len(parents)
        src = torch.tensor(parents + [parents[0]] * (K - n), device=dev)
        for layer in range(len(cache.k)):
            cache.k[layer] = cache.k[layer].index_select(0, src)
            cache.v[layer] = cache.v[layer].index_select(0, src)
        hyps = [hyps[p] + [tok] for p, tok in zip(parents, tokens, strict=True)] + [[] for _ in range(K - n)]
        scores = torch.tensor(new_scores + [float("-inf")] * (K - n), device=dev)
        last = torch.tensor(tokens + [vocab.EOS] * (K - n), device=dev)[:, None]
    return best
