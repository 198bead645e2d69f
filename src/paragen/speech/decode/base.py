"""What every speech strategy shares: the counted decoder, the result, the length limit,
joint CTC/attention greedy verification, and the frame of the non-autoregressive strategies.

A speech strategy is a ``paragen.strategies.base.Strategy`` over the decoder of an
encoder-decoder (``paragen.models.seq2seq``), run by the shared driver like any LM strategy:
the driver stops each row (EOS, its length limit), streams its committed text, counts its
calls and batches utterances. Every row's prompt is ``[EOS]``, the decoder's start symbol,
and its budget is ``max_length`` of its utterance. ``ctx.target`` is a ``CountedDecoder``:
the decoder-only contract for the chain strategies (``ar``, ``ctc_draft``), plus the counted
NAR calls and the batch's encoder output (``memory``, one row per utterance, in order) that
the other strategies read at prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from paragen.speech import align, vocab
from paragen.speech.model import Encoded, SpeechDecoder
from paragen.strategies.base import ChainStrategy, CountedModel, OwnRow, Strategy
from paragen.trace import Trace
from paragen.tree import TokenTree


class CountedDecoder(CountedModel):
    """The counted decoder of a batch of utterances. Each NAR call and each cache-less scoring
    call counts as one call, like a forward: one sequential decoder pass, whatever its batch."""

    model: SpeechDecoder

    @property
    def memory(self) -> Encoded:
        """The encoder output of the batch as it started (row b: prompt b)."""
        return self.model.memory

    def nar_tokens(self, tokens: torch.Tensor, enc: Encoded, pad: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model.speech.nar_tokens(tokens, enc, pad)

    def nar_tae(self, segments: torch.Tensor, enc: Encoded) -> torch.Tensor:
        self.calls += 1
        return self.model.speech.nar_tae(segments, enc)

    @property
    def has_cmlm(self) -> bool:
        """Whether the model has a CMLM decoder of its own (``SpeechModel.cmlm_logits``)."""
        return bool(self.model.speech.config.cmlm_layers)

    def cmlm(self, tokens: torch.Tensor, segments: torch.Tensor, enc: Encoded) -> torch.Tensor:
        self.calls += 1
        return self.model.speech.cmlm_logits(tokens, segments, enc)

    def score(self, tokens: torch.Tensor, positions: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """AR decoder logits for whole sequences over the memory rows ``enc`` (no cache)."""
        self.calls += 1
        return self.model.speech.decode(tokens, positions, enc)


@dataclass
class SpeechStats:
    """Cost of one transcription. ``seconds`` covers the encoder and the decoder (features excluded);
    ``decode_seconds`` the decoder alone; ``rtf`` = seconds / audio seconds."""

    strategy: str
    encoder_calls: int = 0
    decoder_calls: int = 0
    tokens: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0
    audio_seconds: float = 0.0
    lossless: bool = True
    extra: dict = field(default_factory=dict)  # per-decoder detail (mask-predict's kept tokens per iteration, ...)

    @property
    def rtf(self) -> float:
        return self.seconds / self.audio_seconds if self.audio_seconds else float("nan")

    @property
    def tokens_per_call(self) -> float | None:
        """Characters per decoder call; None for a decoder that made none (CTC)."""
        return self.tokens / self.decoder_calls if self.decoder_calls else None

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "encoder_calls": self.encoder_calls, "decoder_calls": self.decoder_calls,
                "tokens": self.tokens, "tokens_per_call": self.tokens_per_call, "seconds": self.seconds,
                "decode_seconds": self.decode_seconds, "audio_seconds": self.audio_seconds, "rtf": self.rtf,
                "lossless": self.lossless, **self.extra}


@dataclass
class Transcript:
    """The text, its character ids, and the stats of one transcription."""

    text: str
    tokens: list[int]
    stats: SpeechStats
    trace: Trace | None = None  # with transcribe(..., trace=True): every decoder call


def max_length(enc: Encoded, row: int = 0) -> int:
    """The longest output any decoder may produce for one utterance: its encoder frames (a CTC
    labelling cannot be longer), at least 8. One limit for every decoder keeps ``ar`` and
    ``ctc_draft`` comparable token for token even when a decoder runs away."""
    return max(8, int(enc.lengths[row]))


def ctc_best_path(enc: Encoded, row: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame argmax labels [S] and their probabilities [S] of one row (padding cut)."""
    S = int(enc.lengths[row])
    p = enc.ctc_logits[row, :S].float().softmax(-1)
    conf, labels = p.max(-1)
    return labels, conf


def characters(tokens: list[int]) -> list[int]:
    """The characters of a CTC-derived output: labels that are not characters (EOS, the mask;
    never CTC targets, so a trained CTC head does not emit them) are dropped, as the text
    (``vocab.decode``) always dropped them; an EOS inside would end the row early."""
    return [t for t in tokens if t > vocab.MASK]


# ---------------------------------------------------------------- joint CTC/attention greedy (ar, ctc_draft)


@dataclass(frozen=True)
class GreedyOptions:
    """The settings of greedy AR decoding, shared by ``ar`` and ``ctc_draft`` (equal settings,
    equal output): ``ctc_weight`` > 0 makes it joint CTC/attention greedy (``GreedyChooser``)."""

    ctc_weight: float = field(default=0.0, metadata={
        "help": "lambda of joint CTC/attention greedy decoding, in [0, 1): each character maximises "
        "(1 - lambda) log p_att + lambda log p_ctc (CTC prefix score); 0: the attention decoder alone"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.ctc_weight < 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1) (1 would ignore the decoder), got {self.ctc_weight}")


class GreedyChooser:
    """The greedy choice after a prefix with ``ctc_weight`` = lambda > 0: the argmax of the joint
    score (1 - lambda) log p_att(c) + lambda psi(prefix + c) (Watanabe et al. 2017;
    ``align.CTCPrefixScorer``), which needs no model call. It follows the committed characters'
    CTC state, so ``ar`` and ``ctc_draft`` make exactly the same choices. ``log_probs`` [S, V]:
    the utterance's CTC frame log-posteriors."""

    def __init__(self, log_probs: torch.Tensor, ctc_weight: float) -> None:
        self.weight = ctc_weight
        self.ctc = align.CTCPrefixScorer(log_probs, vocab.EOS, never=(vocab.BLANK, vocab.MASK))
        self.r, self.last = self.ctc.initial()[None], torch.tensor([-1], device=log_probs.device)

    def accept(self, logits: torch.Tensor, draft: list[int]) -> tuple[int, int]:
        """logits [len(draft) + 1, V] after the committed prefix and each draft prefix: (how many
        draft characters the greedy choice keeps, its choice after them) as ``greedy_accept``;
        the CTC state then follows the kept characters and the choice."""
        chain = TokenTree(-1)
        for node, token in enumerate(draft):
            chain.add(node, token)
        path, choice = self.walk(chain, logits)
        return len(path), choice

    def walk(self, tree: TokenTree, logits: torch.Tensor) -> tuple[list[int], int]:
        """A token tree's greedy walk on the joint score (``verify.verify_tree``'s greedy rule):
        logits [N, V] at each node; from the root, the joint choice after each node, descending
        into the child that holds it. (accepted path, the choice after it); the CTC state then
        follows the path and the choice."""
        logp = logits.double().log_softmax(-1)
        r, last, node, path = self.r, self.last, 0, []
        while True:
            psi, r_all = self.ctc.extend(r, last)
            choice = int(((1 - self.weight) * logp[node] + self.weight * psi[0]).argmax())
            r, last = r_all[:, :, :, choice], torch.tensor([choice], device=r.device)
            child = tree.child(node, choice)
            if child is None:
                self.r, self.last = r, last
                return path, choice
            path.append(child)
            node = child


def joint_chooser(memory: Encoded, row: int, ctc_weight: float) -> GreedyChooser | None:
    """Row ``row``'s joint CTC/attention chooser, or None with ``ctc_weight`` 0 (the decoder alone)."""
    return GreedyChooser(memory.log_probs(row), ctc_weight) if ctc_weight > 0 else None


@dataclass
class JointRow(OwnRow):
    """A speech chain row's own state: with ``ctc_weight`` > 0, its joint CTC/attention chooser."""

    chooser: GreedyChooser | None = None


class JointChain(ChainStrategy):
    """A chain strategy on a speech decoder: the LM chain loop, verified by the attention
    decoder's greedy choice (``verify_chains``), or with ``ctc_weight`` > 0 by each row's joint
    CTC/attention choice (``GreedyChooser``; the same acceptance rule, on the joint score)."""

    attention = "encoder-decoder"
    supports_sampling = False
    Options = GreedyOptions

    def new_row(self, b: int, states: torch.Tensor | None) -> JointRow:
        return JointRow(super().new_row(b, states).stats, joint_chooser(self.ctx.target.memory, b, self.opts.ctc_weight))

    def verify_rows(self, draft: torch.Tensor, lengths: torch.Tensor, logits: torch.Tensor,
                    q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.opts.ctc_weight == 0:
            return super().verify_rows(draft, lengths, logits, q)
        rows = [c.accept(logits[b, : k + 1], draft[b, :k].tolist())
                for b, (c, k) in enumerate(zip((own.chooser for own in self.own), lengths.tolist()))]
        accept, nxt = zip(*rows)
        return torch.tensor(accept, device=logits.device), torch.tensor(nxt, device=logits.device)


# ---------------------------------------------------------------- non-autoregressive strategies


class NARStrategy(Strategy):
    """A strategy that fixes each row's length up front (from CTC) and fills every position in
    a few calls, then commits the row's characters and EOS in one step (its text is final only
    then: mask-predict may re-mask any position until its last call).

    Batches: ``rows`` holds each row's own state (a subclass's dataclass), ``memory`` the
    encoder output of the rows still in the batch; ``select`` filters both. A row that needs no
    (more) model call finishes in a step that makes none (``step_rows`` runs ``finish`` alone
    then), so that the driver, which charges a step's calls to every row in it, counts each
    row's calls as if it were decoded alone.
    """

    batched = True
    attention = "encoder-decoder"
    supports_sampling = False
    lossless = False
    trace_source = "ctc"

    def prefill_rows(self, prompts: list[list[int]]) -> None:
        self.memory = self.ctx.target.memory
        self.rows = [self.start(b) for b in range(len(prompts))]

    def step(self, budget: int) -> list[int]:
        return self.step_rows([budget])[0]

    def step_rows(self, budgets: list[int]) -> list[list[int]]:
        done = [self.finished(r) for r in self.rows]
        if any(done):
            return [self.finish(b) if d else [] for b, d in enumerate(done)]
        return self.advance()

    def select(self, rows: list[int]) -> None:
        self.rows = [self.rows[i] for i in rows]
        self.memory = self.memory.select(rows)

    def row_extra(self, row: int) -> dict[str, Any]:
        return dict(self.rows[row].extra)

    def start(self, row: int) -> Any:
        """Row ``row``'s state before its first call, from ``self.memory``."""
        raise NotImplementedError

    def finished(self, row: Any) -> bool:
        """Whether the row's output is final (no more calls)."""
        raise NotImplementedError

    def finish(self, b: int) -> list[int]:
        """Row b's committed tokens: its output's characters, then EOS."""
        raise NotImplementedError

    def advance(self) -> list[list[int]]:
        """One step with a model call for every row (none is finished): each row's commits."""
        raise NotImplementedError
