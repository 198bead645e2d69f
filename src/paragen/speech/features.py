"""Audio in, 80-dim log-mel filterbanks out: the one code path for training and inference.

``load_audio`` reads any file libsndfile can (WAV, FLAC, OGG, ...) or raw arrays, mixes to
mono and resamples to 16 kHz (soxr, high quality), so a 22.05 or 44.1 kHz file is accepted,
not refused. ``log_mel`` scales the waveform to one speech level (``normalise_level``: the same
recording gives the same features whether it was recorded quietly or loudly, at x0.05 or x5),
then takes a 25 ms Hann window every 10 ms, |STFT|^2 through librosa's Slaney mel filterbank
(80 bands, 0-8 kHz), then log(x + 1e-6): the usual ASR front end. ``check_level`` refuses
silence and warns about input whose level never varies (a steady noise or tone, not speech).
Data directories built before the level was normalised hold features of unscaled audio: the
espeak-ng audio they were made from sits near ``SPEECH_LEVEL`` already.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import torch

from paragen.errors import AudioInputError, warn_caller

SAMPLE_RATE = 16_000
N_FFT, HOP, N_MELS = 400, 160, 80  # 25 ms window, 10 ms hop at 16 kHz
MAX_SECONDS = 30.0  # the longest input the built-in model's positions cover (see model.max_frames)
# The active speech level (RMS of the frames within 20 dB of the loudest, ``speech_level``) every
# waveform is scaled to: that of the espeak-ng audio speech-en was trained on (0.106, 0.115 and
# 0.132 on the three built-in samples, held-out utterances of the training pipeline), so
# audio at the training level is barely changed and the trained model needs no retraining.
SPEECH_LEVEL = 0.12
SILENCE_DB = -70.0  # a loudest level below this (dBFS) holds nothing to hear: refused
STEADY_DB = 6.0  # speech has pauses: loud frames at most this far above the quiet ones are noise or a tone


def frame_power(wave: np.ndarray) -> np.ndarray:
    """Mean power of each 25 ms frame, every 10 ms (the feature frames, no padding) [F]."""
    x = np.asarray(wave, dtype=np.float64)
    if len(x) < N_FFT:
        return np.array([np.mean(x**2)]) if len(x) else np.zeros(1)
    return (np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP] ** 2).mean(axis=1)


def speech_level(wave: np.ndarray) -> float:
    """The active level of a waveform (RMS): the mean power of the frames within 20 dB of the
    loudest (its 99th percentile frame, so a click does not count), as speech levels are
    measured (ITU-T P.56, simplified). Leading and trailing silence, and pauses, do not lower it."""
    power = frame_power(wave)
    loud = np.percentile(power, 99)
    return float(np.sqrt(power[power >= loud / 100].mean())) if loud > 0 else 0.0


def normalise_level(wave: np.ndarray) -> np.ndarray:
    """``wave`` scaled to ``SPEECH_LEVEL`` (unchanged if it is all zeros)."""
    level = speech_level(wave)
    return wave if level == 0 else (np.asarray(wave, dtype=np.float32) * np.float32(SPEECH_LEVEL / level))


@functools.lru_cache(maxsize=1)
def mel_filterbank() -> torch.Tensor:
    """[N_MELS, N_FFT // 2 + 1] Slaney-normalised mel filters (librosa's)."""
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)).float()


def log_mel(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[T, 80] float32 log-mel features of a mono 16 kHz waveform at any level (T = 1 + samples // 160),
    after ``normalise_level``."""
    x = torch.as_tensor(normalise_level(np.asarray(wave, dtype=np.float32)))
    spec = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, return_complex=True)
    power = spec.abs().pow(2)  # [F, T]
    return torch.log(mel_filterbank() @ power + 1e-6).T.contiguous()


def resample(wave: np.ndarray, rate: int) -> np.ndarray:
    """``wave`` at ``rate`` Hz, resampled to 16 kHz (unchanged if already 16 kHz)."""
    if rate == SAMPLE_RATE:
        return wave
    import soxr

    return soxr.resample(wave, rate, SAMPLE_RATE).astype(np.float32)


def load_audio(source: str | os.PathLike | bytes, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """A mono 16 kHz float32 waveform from a file path or the bytes of an audio file.

    One ``AudioInputError`` line for anything unusable: a missing or unreadable file, bytes
    that are not audio, no samples, or more than ``max_seconds`` of audio.
    """
    import soundfile as sf

    name = source_name(source)
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.exists():
            raise AudioInputError(f"{name}: no such file")
        if path.is_dir() or not os.access(path, os.R_OK):
            raise AudioInputError(f"{name}: not a readable file")
    if (len(source) if isinstance(source, bytes) else path.stat().st_size) == 0:
        raise AudioInputError(f"{name}: empty (0 bytes): give an audio file (WAV, FLAC, OGG...)")
    try:
        wave, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else str(source), dtype="float32",
                             always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        # libsndfile's message names what it opened (for bytes, "<_io.BytesIO object at 0x...>"): keep its reason
        reason = str(e).rsplit(": ", 1)[-1]
        raise AudioInputError(f"{name}: not an audio file libsndfile can read (WAV, FLAC, OGG...): {reason}") from e
    return check_wave(wave.mean(axis=1), rate, name, max_seconds)


def source_name(audio: object) -> str:
    """How messages name an audio input: its path, ``<bytes>``, or ``audio`` for a waveform array."""
    if isinstance(audio, bytes):
        return "<bytes>"
    return str(audio) if isinstance(audio, (str, os.PathLike)) else "audio"


def check_wave(wave: np.ndarray, rate: int, name: str = "audio", max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """A 1-D waveform at ``rate`` Hz checked (non-empty, finite, not too long) and resampled to 16 kHz."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise AudioInputError(f"{name}: expected a 1-D mono waveform, got shape {wave.shape}")
    if rate <= 0:
        raise AudioInputError(f"{name}: sample rate {rate} is not positive")
    if wave.size == 0:
        raise AudioInputError(f"{name}: the audio is empty (no samples)")
    if not np.isfinite(wave).all():
        raise AudioInputError(f"{name}: the audio has NaN or infinite samples")
    seconds = wave.size / rate
    if seconds > max_seconds:
        raise AudioInputError(f"{name}: {seconds:.1f} s of audio is longer than the {max_seconds:.0f} s the model "
                              "takes; cut it into shorter pieces")
    if seconds < 0.1:
        raise AudioInputError(f"{name}: {seconds * 1000:.0f} ms of audio is too short to transcribe (at least 100 ms)")
    return resample(wave, rate)


def check_level(wave: np.ndarray, name: str = "audio") -> None:
    """Refuse silence (nothing above ``SILENCE_DB``); warn (``AudioLevelWarning``) when the level
    never varies by more than ``STEADY_DB``: steady noise or a tone, in which whatever the model
    hears is not speech."""
    power = frame_power(wave)
    loud, quiet = np.percentile(power, 99), np.percentile(power, 10)
    if loud == 0 or 10 * np.log10(loud) < SILENCE_DB:
        level = "all zeros" if loud == 0 else f"its loudest frames are at {10 * np.log10(loud):.0f} dBFS"
        raise AudioInputError(f"{name}: the audio is silent ({level}; anything below {SILENCE_DB:.0f} dBFS is "
                              "silence): there is no speech to transcribe")
    if quiet > 0 and 10 * np.log10(loud / quiet) < STEADY_DB:
        warn_caller(f"{name}: the level hardly varies (loud frames {10 * np.log10(loud / quiet):.1f} dB above quiet "
                    "ones, and speech has pauses): this sounds like steady noise or a tone, and the transcript may "
                    "be meaningless", AudioLevelWarning)


class AudioLevelWarning(UserWarning):
    """Audio that may hold no speech (a steady level): its transcript may be meaningless."""
