"""The speech surface: ``transcribe(model, audio, strategy, **options) -> Transcript``.

A transcription is a decode on the shared driver (``paragen.driver``): the utterances are
encoded in one encoder call, then the strategy (``paragen.speech.decode``) runs on the
decoder over their memories (``SpeechModel.decoder``), each row a prompt of one EOS (the
start symbol) with its utterance's length limit as its budget. ``paragen.generate`` and
``paragen.stream`` given a speech model come here; a list of audios is a batch.

``audio`` is a file path, the bytes of an audio file (both carry their sample rate), or a 1-D
waveform (numpy or torch) with its ``sample_rate`` given (required: an array does not say its
rate, and a wrong one silently changes every pitch and duration); other rates than 16 kHz are
resampled. Any level is accepted (``features.normalise_level``); silence is refused and a
steady noise or tone is warned about (``features.check_level``). The features are computed by
``features.log_mel``, the code that made the training features.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paragen.driver import decode
from paragen.errors import AudioInputError, InvalidInputError, UnsupportedOptionError
from paragen.options import make_options
from paragen.request import MAX_BATCH
from paragen.sampling import SamplingParams
from paragen.speech import vocab
from paragen.speech.decode import get_decoder
from paragen.speech.decode.base import CountedDecoder, SpeechStats, Transcript, ctc_best_path, max_length
from paragen.speech.features import SAMPLE_RATE, check_level, check_wave, load_audio, log_mel, source_name
from paragen.speech.model import Encoded, SpeechModel
from paragen.strategies.base import DecodeContext, Strategy
from paragen.streaming import exhaust
from paragen.trace import Recorder, Trace, plain

Audio = str | os.PathLike | bytes | np.ndarray | torch.Tensor


def waveform(audio: Audio, sample_rate: int | None = None) -> np.ndarray:
    """A checked mono 16 kHz float32 waveform from any accepted ``audio`` (AudioInputError otherwise):
    a file or its bytes (``sample_rate`` None: the file says its rate), or an array at ``sample_rate`` Hz."""
    if isinstance(audio, str) and not Path(audio).suffix and not os.path.exists(audio):
        raise InvalidInputError(f"no audio file {audio[:40]!r}: this is a speech model, it transcribes audio (a file path, "
                                "an audio file's bytes, or a waveform with sample_rate), it does not continue text")
    if isinstance(audio, (str, os.PathLike, bytes)):
        if sample_rate is not None:
            raise AudioInputError(f"sample_rate={sample_rate!r} is for waveform arrays: an audio file carries its own "
                                  "rate (drop sample_rate)")
        return load_audio(audio)
    if sample_rate is None:
        raise AudioInputError("a waveform array does not say its sample rate: pass sample_rate= (e.g. "
                              f"transcribe(model, wave, sample_rate={SAMPLE_RATE}) for 16 kHz audio; other rates "
                              "are resampled)")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
        raise AudioInputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    return check_wave(np.asarray(audio), int(sample_rate))


def options_for(name: str, options: dict[str, Any]) -> Any:
    """The strategy's Options from keyword options (strict: unknown or ill-typed ones are an error)."""
    try:
        return make_options(get_decoder(name), options)
    except ValueError as e:
        if isinstance(e, UnsupportedOptionError):
            raise
        raise UnsupportedOptionError(f"{name}: {e}") from e


def decode_batch(model: SpeechModel, features: list[torch.Tensor], strategy: str | type[Strategy] = "ar", options: Any = None,
                 audio_seconds: list[float] | None = None,
                 trace: bool = False) -> Generator[tuple[int, str], None, list[Transcript]]:
    """Transcribe utterances' features [T_b, 80] together: the (not yet started) driver
    generator, yielding ``(row, text piece)`` as rows commit text and returning one Transcript
    per utterance. ``options``: the strategy's Options (default: its defaults); ``trace``: each
    Transcript's ``trace`` records every decoder call and its utterance's CTC best path per frame.
    ``strategy``: a name, or a speech strategy class (a variant of one, as tests make)."""
    cls = strategy if isinstance(strategy, type) else get_decoder(strategy)
    options = options if options is not None else cls.Options()
    if len(features) > 1 and not cls.batched:
        raise UnsupportedOptionError(f"strategy '{cls.name}' decodes one utterance at a time (its beams are the rows of "
                                     "the batch): transcribe the utterances one by one")
    if len(features) > MAX_BATCH:
        raise InvalidInputError(f"a batch of {len(features)} utterances is above MAX_BATCH = {MAX_BATCH}: split it")
    return _decode_batch(model, features, cls, options, audio_seconds, trace)


def _decode_batch(model: SpeechModel, features: list[torch.Tensor], cls: type[Strategy], options: Any,
                  audio_seconds: list[float] | None, trace: bool) -> Generator[tuple[int, str], None, list[Transcript]]:
    strategy, dev, B = cls.name, model.device, len(features)
    with torch.no_grad():
        t0 = time.perf_counter()
        enc = encode(model, features)
        t1 = time.perf_counter()
        limits = [max_length(enc, b) for b in range(B)]
        generators = [torch.Generator(device=dev) for _ in range(B)]  # greedy: never drawn from
        ctx = DecodeContext(target=CountedDecoder(model.bind(enc)), sampling=SamplingParams(0.0),
                            generator=generators[0], generators=generators,
                            # a chain's padded call may write a whole draft (as long as another
                            # row's budget) after a row's committed tokens: room for both
                            cache_length=1 + 2 * max(limits) + cls.slack(options))
        if trace:
            meta = {"model": getattr(model, "name", None), "options": dataclasses.asdict(options)}
            ctx.trace = Recorder(strategy, [[] for _ in range(B)], dev, meta)
        generations = yield from decode(cls(ctx, options), ctx, [[vocab.EOS] for _ in range(B)], limits,
                                        model.tokenizer, model.info.eos_ids)
    out = []
    for b, gen in enumerate(generations):
        s = gen.stats
        seconds = audio_seconds[b] if audio_seconds is not None else features[b].shape[0] / 100
        stats = SpeechStats(strategy, 1, s.target_calls + s.prefill_calls, len(gen.tokens), t1 - t0 + s.seconds,
                            s.seconds, seconds, cls.lossless, s.extra)
        out.append(Transcript(gen.text, gen.tokens, stats))
        if trace:
            out[-1].trace = speech_trace(gen.trace, enc, b, out[-1])
    return out


def encode(model: SpeechModel, features: list[torch.Tensor]) -> Encoded:
    """One encoder call over utterances' features, padded to the longest (padding frames masked)."""
    dev, T = model.device, max(f.shape[0] for f in features)
    x = torch.zeros(len(features), T, features[0].shape[1], dtype=features[0].dtype)
    for b, f in enumerate(features):
        x[b, : f.shape[0]] = f
    return model.encode(x.to(dev), torch.tensor([f.shape[0] for f in features], device=dev))


def decode_features(model: SpeechModel, features: torch.Tensor, strategy: str | type[Strategy] = "ar", options: Any = None,
                    audio_seconds: float | None = None, trace: bool = False) -> Transcript:
    """Transcribe one utterance's features [T, 80] (``decode_batch`` of one)."""
    return exhaust(decode_batch(model, [features], strategy, options, None if audio_seconds is None else [audio_seconds],
                            trace))[0]


def speech_trace(t: Trace, enc: Encoded, row: int, transcript: Transcript) -> Trace:
    """The finished trace of one transcription: its calls, and the CTC best path per frame
    (label and probability: the alignment every CTC-based decoder starts from)."""
    labels, conf = ctc_best_path(enc, row)
    t.tokens, t.text, t.stats = list(transcript.tokens), transcript.text, plain(transcript.stats.to_dict())
    t.meta["frames"] = {"labels": labels.tolist(), "probs": [round(c, 3) for c in conf.tolist()]}
    t.describe(vocab.decode)
    ids = set(t.pieces) | set(t.meta["frames"]["labels"])  # a label that is no character (blank, EOS) shows as <id>
    t.pieces = {i: vocab.decode([i]) or f"<{i}>" for i in sorted(ids)}
    t.prompt_text = ""
    return t


def audio_batch(audio: Audio | Sequence[Audio]) -> list[Audio] | None:
    """The audios of a batch (a list or tuple of them), or None for one."""
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise InvalidInputError("empty list: give an audio (file, bytes or waveform) or a list of them")
        return list(audio)
    return None


def transcripts(model: SpeechModel, audios: list[Audio], strategy: str = "ar", sample_rate: int | None = None,
                trace: bool = False, **options: Any) -> Generator[tuple[int, str], None, list[Transcript]]:
    """Every argument checked, then the (not yet started) decode of a batch of audios."""
    if not isinstance(model, SpeechModel):
        raise InvalidInputError("transcribe needs a speech model, e.g. paragen.load(\"speech-en\")")
    opts = options_for(strategy, options)
    waves = []
    for audio in audios:
        wave = waveform(audio, sample_rate)
        check_level(wave, source_name(audio))
        waves.append(wave)
    return decode_batch(model, [log_mel(w) for w in waves], strategy, opts, [len(w) / SAMPLE_RATE for w in waves],
                        trace=trace)


def transcribe(model: SpeechModel, audio: Audio | Sequence[Audio], strategy: str = "ar", sample_rate: int | None = None,
               trace: bool = False, **options: Any) -> Transcript | list[Transcript]:
    """Transcribe an utterance with a strategy (``ar``, ``beam``, ``ctc``, ``ctc_draft``, ``mask_predict``, ``cass_nat``).

    ``audio``: a file path or an audio file's bytes, or a 1-D waveform array (numpy or torch)
    with its ``sample_rate`` in Hz (required for arrays; refused for files, which carry theirs);
    or a list of those, decoded together as a batch (one encoder call, then every decoder call
    shared by the rows still decoding): a list of Transcripts comes back, each equal to that
    utterance's alone. Silent audio is refused (``AudioInputError``); audio whose level never
    varies gets an ``AudioLevelWarning``. Options are the strategy's keyword options
    (``beam=4``, ``iterations=10``, ``samples=5``...); ``trace=True`` records every decoder call
    (``Transcript.trace``). Returns ``Transcript(text, tokens, stats)``; ``stats`` has encoder
    and decoder calls, tokens per decoder call, seconds and the real-time factor.
    """
    batch = audio_batch(audio)
    out = exhaust(transcripts(model, batch or [audio], strategy, sample_rate, trace, **options))
    return out if batch is not None else out[0]


# stream()'s language-model arguments and their defaults: a speech decode takes none of them.
LM_DEFAULTS = {"max_new_tokens": 128, "temperature": 0.0, "top_k": None, "top_p": None, "seed": None, "stop": None,
               "draft": None, "heads": None}


def stream_pieces(model: SpeechModel, audio: Audio, strategy: str, trace: bool, lm: dict[str, Any],
                  options: dict[str, Any]) -> Generator[tuple[int, str], None, list[Transcript]]:
    """``paragen.stream`` on a speech model: one utterance, every argument checked before the
    first piece. A language-model argument set to anything but its default is refused as the
    strategy option it is not (as ``generate`` refuses it)."""
    if audio_batch(audio) is not None:
        raise InvalidInputError("stream() decodes one utterance: pass a list of audios to transcribe() instead")
    given = {k: v for k, v in lm.items() if v is not LM_DEFAULTS[k] and v != LM_DEFAULTS[k]}
    sample_rate = options.pop("sample_rate", None)
    return transcripts(model, [audio], strategy, sample_rate, trace, **given, **options)
