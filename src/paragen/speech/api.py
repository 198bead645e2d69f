"""The speech surface: ``transcribe(model, audio, strategy, **options) -> Transcript``.

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
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from paragen.errors import AudioInputError
from paragen.speech import vocab
from paragen.speech.decode import get_decoder
from paragen.speech.decode.base import CountedSpeechModel, SpeechStats, Transcript, ctc_best_path
from paragen.speech.features import SAMPLE_RATE, check_level, check_wave, load_audio, log_mel, source_name
from paragen.speech.model import SpeechModel
from paragen.trace import Recorder, Trace, plain

Audio = str | os.PathLike | bytes | np.ndarray | torch.Tensor


def waveform(audio: Audio, sample_rate: int | None = None) -> np.ndarray:
    """A checked mono 16 kHz float32 waveform from any accepted ``audio`` (AudioInputError otherwise):
    a file or its bytes (``sample_rate`` None: the file says its rate), or an array at ``sample_rate`` Hz."""
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
    """The decoder's Options from keyword options (strict: unknown or ill-typed ones are an error)."""
    from paragen.errors import UnsupportedOptionError
    from paragen.options import make_options

    module = get_decoder(name)
    try:
        return make_options(SimpleNamespace(name=name, Options=module.Options), options)
    except ValueError as e:
        if isinstance(e, UnsupportedOptionError):
            raise
        raise UnsupportedOptionError(f"{name}: {e}") from e


def decode_features(model: SpeechModel, features: torch.Tensor, strategy: str = "ar", options: Any = None,
                    audio_seconds: float | None = None, trace: bool = False) -> Transcript:
    """Transcribe one utterance's features [T, 80] with a decoder; ``options`` is its Options (default: its defaults).
    ``trace``: the Transcript's ``trace`` records every decoder call and the CTC best path per frame."""
    module = get_decoder(strategy)
    options = options if options is not None else module.Options()
    counted = CountedSpeechModel(model)
    dev = counted.device
    meta = {"model": getattr(model, "name", None), "options": dataclasses.asdict(options)}
    recorder = Recorder(strategy, [[]], dev, meta) if trace else None
    with torch.no_grad():
        t0 = time.perf_counter()
        enc = counted.encode(features[None].to(dev), torch.tensor([features.shape[0]], device=dev))
        t1 = time.perf_counter()
        result = module.decode(counted, enc, options, trace=recorder)
        t2 = time.perf_counter()
    tokens, extra = result if isinstance(result, tuple) else (result, {})
    stats = SpeechStats(strategy, counted.encoder_calls, counted.decoder_calls, len(tokens), t2 - t0, t2 - t1,
                        audio_seconds if audio_seconds is not None else features.shape[0] / 100, module.LOSSLESS, extra)
    out = Transcript(vocab.decode(tokens), tokens, stats)
    if recorder:
        out.trace = speech_trace(recorder, enc, out)
    return out


def speech_trace(recorder: Recorder, enc: Any, transcript: Transcript) -> Trace:
    """The finished trace of one transcription: its calls, and the CTC best path per frame
    (label and probability: the alignment every CTC-based decoder starts from)."""
    labels, conf = ctc_best_path(enc)
    t = recorder.traces[0]
    t.tokens, t.text, t.stats = list(transcript.tokens), transcript.text, plain(transcript.stats.to_dict())
    t.meta["frames"] = {"labels": labels.tolist(), "probs": [round(c, 3) for c in conf.tolist()]}
    t.describe(vocab.decode)
    t.pieces.update({i: vocab.decode([i]) or f"<{i}>" for i in set(t.meta["frames"]["labels"])})
    t.prompt_text = ""
    return t


def transcribe(model: SpeechModel, audio: Audio, strategy: str = "ar", sample_rate: int | None = None,
               trace: bool = False, **options: Any) -> Transcript:
    """Transcribe one utterance with a decoder (``ar``, ``beam``, ``ctc``, ``ctc_draft``, ``mask_predict``, ``cass_nat``).

    ``audio``: a file path or an audio file's bytes, or a 1-D waveform array (numpy or torch)
    with its ``sample_rate`` in Hz (required for arrays; refused for files, which carry theirs).
    Silent audio is refused (``AudioInputError``); audio whose level never varies gets an
    ``AudioLevelWarning``. Options are the decoder's keyword options (``beam=4``,
    ``iterations=10``, ``samples=5``...); ``trace=True`` records every decoder call
    (``Transcript.trace``). Returns ``Transcript(text, tokens, stats)``; ``stats``
    has encoder and decoder calls, tokens per decoder call, seconds and the real-time factor.
    """
    if not isinstance(model, SpeechModel):
        from paragen.errors import InvalidInputError

        raise InvalidInputError("transcribe needs a speech model, e.g. paragen.load(\"speech-en\")")
    opts = options_for(strategy, options)
    wave = waveform(audio, sample_rate)
    check_level(wave, source_name(audio))
    return decode_features(model, log_mel(wave), strategy, opts, audio_seconds=len(wave) / SAMPLE_RATE, trace=trace)
