"""What every speech decoder shares: the counted model, the result, and the length limit.

A decoder is a module with ``NAME``, ``SUMMARY``, ``LOSSLESS`` (identical to ``ar`` greedy
token for token), a frozen ``Options`` dataclass (the only place its defaults live; fields
carry ``help`` metadata for the CLI), and ``decode(model, enc, options, trace=None) -> list[int]`` that
turns one encoded utterance into characters. It calls the model only through
``CountedSpeechModel``, so decoder calls are counted the same way for every decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from paragen.cache import KVCache
from paragen.speech import align, vocab
from paragen.speech.model import Encoded, SpeechModel
from paragen.trace import Trace
from paragen.verify import greedy_accept


class CountedSpeechModel:
    """A ``SpeechModel`` whose encoder and decoder calls are counted (AR and NAR decoder calls alike:
    each is one sequential forward of a decoder, whatever its batch)."""

    def __init__(self, model: SpeechModel) -> None:
        self.model, self.encoder_calls, self.decoder_calls = model, 0, 0

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def encode(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> Encoded:
        self.encoder_calls += 1
        return self.model.encode(features, lengths)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, enc: Encoded, cache: KVCache | None = None) -> torch.Tensor:
        self.decoder_calls += 1
        return self.model.decode(tokens, positions, enc, cache)

    def nar_tokens(self, tokens: torch.Tensor, enc: Encoded, pad: torch.Tensor) -> torch.Tensor:
        self.decoder_calls += 1
        return self.model.nar_tokens(tokens, enc, pad)

    def nar_tae(self, segments: torch.Tensor, enc: Encoded) -> torch.Tensor:
        self.decoder_calls += 1
        return self.model.nar_tae(segments, enc)

    def new_cache(self, batch: int, max_length: int) -> KVCache:
        return self.model.new_cache(batch, max_length)


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


def max_length(enc: Encoded) -> int:
    """The longest output any decoder may produce for one utterance: its encoder frames (a CTC
    labelling cannot be longer), at least 8. One limit for every decoder keeps ``ar`` and
    ``ctc_draft`` comparable token for token even when a decoder runs away."""
    return max(8, int(enc.lengths[0]))


def ctc_best_path(enc: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame argmax labels [S] and their probabilities [S] of a batch-1 encoding (padding cut)."""
    S = int(enc.lengths[0])
    p = enc.ctc_logits[0, :S].float().softmax(-1)
    conf, labels = p.max(-1)
    return labels, conf


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
    """The greedy choice after a prefix: the decoder's argmax, or with ``ctc_weight`` = lambda > 0
    the argmax of the joint score (1 - lambda) log p_att(c) + lambda psi(prefix + c) (Watanabe et
    al. 2017; ``align.CTCPrefixScorer``), which needs no model call. It follows the committed
    characters' CTC state, so ``ar`` and ``ctc_draft`` make exactly the same choices."""

    def __init__(self, enc: Encoded, ctc_weight: float) -> None:
        self.weight = ctc_weight
        if ctc_weight > 0:
            lp = enc.ctc_logits[0, : int(enc.lengths[0])].float().log_softmax(-1)
            self.ctc = align.CTCPrefixScorer(lp, vocab.EOS, never=(vocab.BLANK, vocab.MASK))
            self.r, self.last = self.ctc.initial()[None], torch.tensor([-1], device=lp.device)

    def accept(self, logits: torch.Tensor, draft: list[int]) -> tuple[int, int]:
        """logits [len(draft) + 1, V] after the committed prefix and each draft prefix: (how many
        draft characters the greedy choice keeps, its choice after them) as ``greedy_accept``;
        the CTC state then follows the kept characters and the choice."""
        if self.weight == 0:
            return greedy_accept(draft, logits.argmax(-1).tolist())
        logp = logits.double().log_softmax(-1)
        r, last, i = self.r, self.last, 0
        while True:  # position by position, up to the first disagreement or the draft's end
            psi, r_all = self.ctc.extend(r, last)
            choice = int(((1 - self.weight) * logp[i] + self.weight * psi[0]).argmax())
            r, last = r_all[:, :, :, choice], torch.tensor([choice], device=r.device)
            if i == len(draft) or choice != draft[i]:
                self.r, self.last = r, last
                return i, choice
            i += 1
