"""``paragen.load``: a language model or a speech model, by built-in name, directory or GGUF file."""

from __future__ import annotations

from typing import Any

import torch

from paragen.errors import InvalidInputError
from paragen.models import load as load_lm
from paragen.models.io import resolve
from paragen.speech.model import is_speech_model, load_speech_model


def load(name_or_path: str | Any, backend: str = "native", dtype: torch.dtype | str | None = None,
         compile: bool = False, device: str | torch.device = "cpu", threads: int | None = None) -> Any:
    """A built-in model by name or a model directory (see ``paragen.models.load`` for the
    arguments); a speech model (``speech-en``, or a directory from ``paragen train speech``)
    loads as a ``SpeechModel``, on the CPU, in float32 or float64."""
    if backend == "llamacpp":  # a GGUF file or a model directory; threads: llama.cpp's own
        return load_lm(name_or_path, backend=backend, dtype=dtype, compile=compile, device=device, threads=threads)
    path = resolve(name_or_path)
    if is_speech_model(path):
        if compile or str(device) != "cpu" or isinstance(dtype, str):
            raise InvalidInputError("speech models load on the CPU, uncompiled, as a torch dtype: drop compile, "
                                    "device and weight formats")
        model = load_speech_model(path, dtype or torch.float32)
        model.name = path.name
        return model
    return load_lm(name_or_path, backend=backend, dtype=dtype, compile=compile, device=device)
