"""Audio in, 80-dim log-mel filterbanks out: the one code path for training and inference.

``load_audio`` reads any file libsndfile can (WAV, FLAC, OGG, ...) or raw arrays, mixes to
mono and resamples to 16 kHz (soxr, high quality), so a 22.05 or 44.1 kHz file is accepted,
not refused. ``log_mel`` is a 25 ms Hann window every 10 ms, |STFT|^2 through librosa's
Slaney mel filterbank (80 bands, 0-8 kHz), then log(x + 1e-6): the usual ASR front end.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import torch

from paragen.errors import AudioInputError

SAMPLE_RATE = 16_000
N_FFT, HOP, N_MELS = 400, 160, 80  # 25 ms window, 10 ms hop at 16 kHz
MAX_SECONDS = 30.0  # the longest input the built-in model's positions cover (see model.max_frames)


@functools.lru_cache(maxsize=1)
def mel_filterbank() -> torch.Tensor:
    """[N_MELS, N_FFT // 2 + 1] Slaney-normalised mel filters (librosa's)."""
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)).float()


def log_mel(wave: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[T, 80] float32 log-mel features of a mono 16 kHz waveform in [-1, 1] (T = 1 + samples // 160)."""
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
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

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.exists():
            raise AudioInputError(f"{name}: no such file")
        if path.is_dir() or not os.access(path, os.R_OK):
            raise AudioInputError(f"{name}: not a readable file")
    try:
        wave, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else str(source), dtype="float32",
                             always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioInputError(f"{name}: not an audio file libsndfile can read (WAV, FLAC, OGG...): {e}") from e
    return check_wave(wave.mean(axis=1), rate, name, max_seconds)


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
