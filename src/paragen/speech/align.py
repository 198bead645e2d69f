"""CTC alignments: best-path collapse, Viterbi forced alignment, and token segments.

An alignment gives every encoder frame a label or the blank. Collapsing it (merge runs of
the same label, then drop blanks; Graves et al. 2006, sec. 3.1) gives the tokens; the frames
it assigns to each token are that token's segment, from which CASS-NAT pools a token-level
acoustic embedding (Fan et al. 2021). Here token i's segment is every frame after the end
of token i-1's run up to the end of its own run (the blanks before a token belong to it);
trailing blanks belong to the last token.
"""

from __future__ import annotations

import torch

from paragen.speech.vocab import BLANK


def collapse(labels: list[int]) -> list[int]:
    """Merge repeated labels, then drop blanks: [a, a, -, a, b, b] -> [a, a, b]."""
    out, prev = [], None
    for x in labels:
        if x != prev and x != BLANK:
            out.append(x)
        prev = x
    return out


def segments(labels: torch.Tensor, valid: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
    """Tokens and segments of frame labels [B, S] (valid [B, S] False on padding frames).

    Returns the collapsed tokens of each row and segments [B, L, S] bool (L = longest row;
    a row's padding tokens have empty segments).
    """
    B, S = labels.shape
    labels = labels.masked_fill(~valid, BLANK)
    nxt = torch.cat([labels[:, 1:], torch.full((B, 1), -1, dtype=labels.dtype, device=labels.device)], 1)
    run_end = (labels != BLANK) & (labels != nxt)  # [B, S] the last frame of each token's run
    n_tok = run_end.sum(1)
    L = max(int(n_tok.max()), 1)
    owner = run_end.long().cumsum(1) - run_end.long()  # runs ended before each frame = its token
    owner = torch.minimum(owner, (n_tok - 1).clamp_min(0)[:, None])
    seg = (owner[:, None, :] == torch.arange(L, device=labels.device)[None, :, None]) & valid[:, None, :]
    seg &= (torch.arange(L, device=labels.device)[None, :] < n_tok[:, None])[:, :, None]
    tokens = [labels[b][run_end[b]].tolist() for b in range(B)]
    return tokens, seg


def viterbi(log_probs: torch.Tensor, frames: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """The most likely CTC alignment of each target: frame labels [B, S].

    log_probs [B, S, V], frames [B] valid frames per row. Dynamic programming over the
    extended label sequence (blank, y1, blank, y2, ..., blank) as in the CTC forward pass with
    max for sum (Graves et al. 2006, sec. 4.1). A row whose target cannot fit its frames gets
    an all-blank alignment (its caller sees zero tokens and skips it).
    """
    B, S, V = log_probs.shape
    N = 2 * max(max((len(t) for t in targets), default=0), 1) + 1
    ext = torch.full((B, N), BLANK, dtype=torch.long)
    for b, t in enumerate(targets):
        ext[b, 1 : 2 * len(t) : 2] = torch.tensor(t, dtype=torch.long)
    n_ext = torch.tensor([2 * len(t) + 1 for t in targets])
    emit = log_probs.float().gather(2, ext[:, None, :].expand(B, S, N).to(log_probs.device)).cpu()  # [B, S, N]
    neg = torch.tensor(float("-inf"))
    skip_ok = torch.zeros(B, N, dtype=torch.bool)  # may jump from n-2 to n: a label differing from the one before
    skip_ok[:, 2:] = (ext[:, 2:] != BLANK) & (ext[:, 2:] != ext[:, :-2])
    delta = torch.full((B, N), float("-inf"))
    delta[:, :2] = emit[:, 0, :2]
    back = torch.zeros(B, S, N, dtype=torch.long)
    final = delta.clone()
    for t in range(1, S):
        stay, step = delta, torch.cat([torch.full((B, 1), neg), delta[:, :-1]], 1)
        jump = torch.cat([torch.full((B, 2), neg), delta[:, :-2]], 1).masked_fill(~skip_ok, neg)
        best, arg = torch.stack([stay, step, jump], -1).max(-1)
        delta = best + emit[:, t]
        back[:, t] = arg
        done = frames == t + 1
        final[done] = delta[done]
    labels = torch.full((B, S), BLANK, dtype=torch.long)
    for b in range(B):
        T, n = int(frames[b]), int(n_ext[b])
        ends = final[b, n - 2 : n] if n > 1 else final[b, :1]
        if not torch.isfinite(ends).any():
            continue
        state = n - 2 + int(ends.argmax()) if n > 1 else 0
        for t in range(T - 1, -1, -1):
            labels[b, t] = ext[b, state]
            state -= int(back[b, t, state])
    return labels


class CTCPrefixScorer:
    """CTC prefix scores of hypotheses extended by every token at once (Watanabe et al. 2017,
    "Hybrid CTC/Attention Architecture for End-to-End Speech Recognition", Algorithm 2), for
    one utterance's CTC log-probabilities ``log_probs`` [T, V].

    A hypothesis g carries its forward variables ``r`` [T, 2]: log P(g's labels in frames
    1..t, frame t emitting g's last label (column 0) or a blank (column 1)). Extending g by c
    gives h = g + c with r(h) from r(g) in one pass over the frames, and the prefix score
    psi(h) = log P(some labelling starting with h); for c = ``eos`` it is log P(labelling == g).
    psi only falls as a hypothesis grows, so a search that stops when no live hypothesis can
    beat the best finished one stays exact. Tokens in ``never`` (the blank, a mask) get -inf.
    """

    def __init__(self, log_probs: torch.Tensor, eos: int, never: tuple[int, ...] = (BLANK,)) -> None:
        self.lp = log_probs.double()
        self.eos, self.never = eos, list(never)
        # The closed form subtracts running sums of log-probabilities: a -inf gives -inf - -inf =
        # NaN, and sums beyond ~1e6 leave float64 fewer than ~10 correct digits after the offset
        # cancels. Such posteriors (probs.log() after underflow, masked logits) take the recursion.
        self.closed_form_safe = bool(torch.isfinite(self.lp).all()) and float(self.lp.sum(0).min()) > -1e6

    def initial(self) -> torch.Tensor:
        """r of the empty hypothesis [T, 2]: nothing emitted, every frame so far a blank."""
        r = torch.full((self.lp.shape[0], 2), float("-inf"), dtype=torch.float64, device=self.lp.device)
        r[:, 1] = self.lp[:, BLANK].cumsum(0)
        return r

    def extend(self, r: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For K hypotheses with forward variables r [K, T, 2] and last tokens last [K] (-1 for
        the empty one): psi [K, V] of every one-token extension, and their r [K, T, 2, V]."""
        y = self.lp  # [T, V]
        V = y.shape[1]
        neg = torch.tensor(float("-inf"), dtype=torch.float64, device=y.device)
        same = torch.arange(V, device=y.device)[None, :] == last[:, None]  # [K, V]: c repeats g's last token
        # phi[t]: g complete by frame t, in a state c may follow (after a blank, or a different token)
        phi = torch.logaddexp(r[:, :, 1, None], torch.where(same[:, None, :], neg, r[:, :, 0, None]))  # [K, T, V]
        rn0 = torch.where((last < 0)[:, None], y[0][None, :], neg)  # only an empty g lets c start at frame 1
        rn, rb = (self._closed_form if self.closed_form_safe else self._frame_by_frame)(phi, rn0)
        psi = torch.logsumexp(torch.cat([rn0[:, None], phi[:, :-1] + y[1:][None]], 1), 1)  # c first emitted at frame t
        psi[:, self.eos] = torch.logaddexp(r[:, -1, 0], r[:, -1, 1])  # g itself, ending at the last frame
        psi[:, self.never] = float("-inf")
        return psi, torch.stack([rn, rb], 2)

    def _closed_form(self, phi: torch.Tensor, rn0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rn, rb [K, T, V] in closed form (finite log-probabilities of moderate size only).

        The recursions rn[t] = (rn[t-1] + phi[t-1]) y_c[t] and rb[t] = (rb[t-1] + rn[t-1]) y_blank[t]
        are linear, so each is a cumulative sum in closed form: with C[t] = sum_{u<=t} log y_c[u],
        rn[t] = C[t] + log(rn[0] / y_c[0] + sum_{s<t} phi[s] / exp(C[s])), i.e. one logcumsumexp
        over the frames instead of a loop of T small steps (float64 keeps the large offsets exact).
        """
        y = self.lp
        K, V = phi.shape[0], y.shape[1]
        C = y.cumsum(0)[None]  # [1, T, V]
        a = torch.cat([(rn0 - C[:, 0])[:, None], phi[:, :-1] - C[:, :-1]], 1)
        rn = C + torch.logcumsumexp(a, 1)
        B = y[:, BLANK].cumsum(0)[None, :, None]  # [1, T, 1]
        b = torch.cat([torch.full((K, 1, V), float("-inf"), dtype=torch.float64, device=y.device),
                       rn[:, :-1] - B[:, :-1]], 1)
        return rn, B + torch.logcumsumexp(b, 1)

    def _frame_by_frame(self, phi: torch.Tensor, rn0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rn, rb [K, T, V] by the frame recursion itself: exact with zero posteriors (-inf), where
        the closed form's C - C is NaN, and with huge negative ones, where it loses every digit."""
        y = self.lp
        rn = torch.empty_like(phi)
        rb = torch.empty_like(phi)
        rn[:, 0], rb[:, 0] = rn0, float("-inf")
        for t in range(1, y.shape[0]):
            rn[:, t] = torch.logaddexp(rn[:, t - 1], phi[:, t - 1]) + y[t]
            rb[:, t] = torch.logaddexp(rb[:, t - 1], rn[:, t - 1]) + y[t, BLANK]
        return rn, rb
