"""Model backends behind one contract, and ``load()``."""

from __future__ import annotations

import os
import warnings

import torch

from paragen.errors import InvalidInputError
from paragen.models.base import Model, ModelInfo
from paragen.models.io import builtin_models, load_native, resolve, save_model
from paragen.models.native import NativeConfig, NativeModel
from paragen.tokenizer import Tokenizer, has_tokenizer

__all__ = ["Model", "ModelInfo", "NativeConfig", "NativeModel", "builtin_models", "load", "save_model"]

BACKENDS = ("native", "hf")
# Weight dtypes the CLIs offer by name. bfloat16 roughly halves the bytes a decode step
# reads, which bounds a small model's step on CPU; float16 matmuls are slow on most CPUs.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def load(name_or_path: str | os.PathLike, backend: str = "native", dtype: torch.dtype | None = None) -> Model:
    """Load a built-in model by name or a Hugging Face model directory, with its tokenizer.

    ``backend``: ``"native"`` (paragen's own Llama/Qwen2/Mistral implementation, fastest on CPU)
    or ``"hf"`` (any transformers causal LM). ``dtype`` defaults to float32. A directory
    without tokenizer files loads with a warning: its prompts must be lists of token ids.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    path = resolve(name_or_path)
    dtype = dtype or torch.float32
    tokenizer = Tokenizer.from_dir(path) if has_tokenizer(path) else None
    if backend == "native":
        model: Model = load_native(path, dtype)
    else:
        from paragen.models.hf import HFModel

        model = HFModel.from_dir(path, dtype)
    model.tokenizer = tokenizer
    model.name = path.name
    if tokenizer is None:
        warnings.warn(f"{path} has no tokenizer files: pass prompts as lists of token ids", stacklevel=2)
        return model
    if model.info.eos_ids == () and tokenizer.eos_id is not None:
        model.info = ModelInfo(**{**model.info.__dict__, "eos_ids": (tokenizer.eos_id,)})
    if model.info.mask_id is None and tokenizer.mask_id is not None:
        model.info = ModelInfo(**{**model.info.__dict__, "mask_id": tokenizer.mask_id})
    return model
