"""The speech surface: ``transcribe(model, audio, strategy, **options) -> Transcript``.

``audio`` is a file path, the bytes of an audio file, or a 1-D waveform (numpy or torch) at
``sample_rate`` (default 16 kHz; other rates are resampled). The features are computed by
``features.log_mel``, the code that made the training features.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from paragen.speech import vocab
from paragen.speech.decode import get_decoder
from paragen.speech.decode.base import CountedSpeechModel, SpeechStats, Transcript
from paragen.speech.features import SAMPLE_RATE, check_wave, load_audio, log_mel
from paragen.speech.model import SpeechModel

Audio = str | os.PathLike | bytes | np.ndarray | torch.Tensor


def waveform(audio: Audio, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A checked mono 16 kHz float32 waveform from any accepted ``audio`` (AudioInputError otherwise)."""
    if isinstance(audio, (str, os.PathLike, bytes)):
        return load_audio(audio)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    return check_wave(np.asarray(audio), sample_rate)


def options_for(name: str, options: dict[str, Any]) -> Any:
    """The decoder's Options from keyword options (strict: unknown or ill-typed ones are an error)."""
    from paragen.api import make_options
    from paragen.errors import UnsupportedOptionError

    module = get_decoder(name)
    try:
        return make_options(SimpleNamespace(name=name, Options=module.Options), options)
    except ValueError as e:
        if isinstance(e, UnsupportedOptionError):
            raise
        raise UnsupportedOptionError(f"{name}: {e}") from e


def decode_features(model: SpeechModel, features: torch.Tensor, strategy: str = "ar", options: Any = None,
                    audio_seconds: float | None = None) -> Transcript:
    """Transcribe one utterance's features [T, 80] with a decoder; ``options`` is its Options (default: its defaults)."""
    module = get_decoder(strategy)
    options = options if options is not None else module.Options()
    counted = CountedSpeechModel(model)
    dev = counted.device
    with torch.no_grad():
        t0 = time.perf_counter()
        enc = counted.encode(features[None].to(dev), torch.tensor([features.shape[0]], device=dev))
        t1 = time.perf_counter()
        result = module.decode(counted, enc, options)
        t2 = time.perf_counter()
    tokens, extra = result if isinstance(result, tuple) else (result, {})
    stats = SpeechStats(strategy, counted.encoder_calls, counted.decoder_calls, len(tokens), t2 - t0, t2 - t1,
                        audio_seconds if audio_seconds is not None else features.shape[0] / 100, module.LOSSLESS, extra)
    return Transcript(vocab.decode(tokens), tokens, stats)


def transcribe(model: SpeechModel, audio: Audio, strategy: str = "ar", sample_rate: int = SAMPLE_RATE,
               **options: Any) -> Transcript:
    """Transcribe one utterance with a decoder (``ar``, ``beam``, ``ctc``, ``ctc_draft``, ``mask_predict``, ``cass_nat``).

    Options are the decoder's keyword options (``beam=4``, ``iterations=10``, ``samples=5``...).
    Returns ``Transcript(text, tokens, stats)``; ``stats`` has encoder and decoder calls, tokens
    per decoder call, seconds and the real-time factor.
    """
    if not isinstance(model, SpeechModel):
        from paragen.errors import InvalidInputError

        raise InvalidInputError("transcribe needs a speech model, e.g. paragen.load(\"speech-en\")")
    opts = options_for(strategy, options)
    wave = waveform(audio, sample_rate)
    return decode_features(model, log_mel(wave), strategy, opts, audio_seconds=len(wave) / SAMPLE_RATE)
