"""Model backends behind one contract, and ``load()``."""

from __future__ import annotations

import os

import torch

from paragen.errors import DeviceError, InvalidInputError, warn_caller
from paragen.models.base import Model, ModelInfo
from paragen.models.io import NoTokenizerWarning, builtin_models, load_dir, resolve, save_model
from paragen.models.native import NativeConfig, NativeModel
from paragen.models.quant import WEIGHT_FORMATS

__all__ = ["DTYPES", "DTYPE_CHOICES", "Model", "ModelInfo", "NativeConfig", "NativeModel", "NoTokenizerWarning",
           "builtin_models", "device_of", "load", "parse_device", "save_model", "torch_dtype"]

BACKENDS = ("native", "hf", "llamacpp")
COMPILE_CHOICES = (False, True, "auto")  # load(compile=...)
# Weight dtypes the CLIs offer by name. bfloat16 roughly halves the bytes a decode step
# reads, which bounds a small model's step on CPU; float16 matmuls are slow on most CPUs.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
# Every name --dtype and load(dtype=...) accept: the dtypes, and the weight formats of
# paragen.models.quant (float32 models whose matmuls read packed weights; native backend only).
DTYPE_CHOICES = (*DTYPES, *WEIGHT_FORMATS)
DTYPE_HELP = ("float32 (default) and float64 are exact; fp16-weights (float16 weights, float32 compute) is exact "
              "for float16-stored models such as the built-ins, and faster; bfloat16 also rounds activations "
              "(outputs differ) and int8-weights is lossy: both labelled lossy in stats")


def parse_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``...: checked to exist here, so a
    typo or a missing GPU is one clear error before anything loads."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA GPU: use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise DeviceError(f"device {device!r} is not supported: use cpu or cuda[:N]")
    return dev


def device_of(model: Model) -> torch.device:
    """The device a model's weights live on (where every tensor of its decoding loop goes)."""
    own = getattr(model, "device", None)  # a wrapper or adapter that says so
    if isinstance(own, torch.device):
        return own
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "module", None)
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            return p.device
    inner = getattr(model, "target", None) or getattr(model, "model", None)  # test doubles that wrap a model
    return device_of(inner) if inner is not None and inner is not model else torch.device("cpu")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a --dtype name (a weight format computes in float32)."""
    if name not in DTYPE_CHOICES:
        raise InvalidInputError(f"unknown dtype '{name}': choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES.get(name, torch.float32)


def load(
    name_or_path: str | os.PathLike, backend: str = "native", dtype: torch.dtype | str | None = None,
    compile: bool | str = False, device: str | torch.device = "cpu", threads: int | None = None,
) -> Model:
    """Load a built-in model by name or a Hugging Face model directory, with its tokenizer.

    ``backend``: ``"native"`` (paragen's own Llama/Qwen2/Mistral implementation, fastest on CPU)
    or ``"hf"`` (any transformers causal LM). ``dtype``: a torch dtype or a name of
    ``DTYPE_CHOICES`` (see ``DTYPE_HELP`` for which are exact); float32 by default. A native
    model runs its packed inference path (``NativeModel.pack``). ``compile=True`` (native
    only, opt-in) compiles its decode step on a few padded call sizes (``NativeModel.compile_decode``);
    ``compile="auto"`` compiles each of its graphs only once that graph's calls have run long
    enough eagerly to repay its compile (on the CPU; on CUDA at first use), and leaves models it
    cannot compile (other backends, weight formats) eager.
    ``device``: where the weights go (``"cpu"``, ``"cuda"``, ``"cuda:1"``...); every strategy
    then decodes there. ``backend="llamacpp"``: llama.cpp on the CPU, from a GGUF file or a
    model converted on the fly (``paragen.models.llamacpp.load_llamacpp``; ``dtype`` float32,
    fp16-weights or int8-weights pick the GGUF type f32, f16 or q8_0), on ``threads`` threads
    (default: torch's). A directory without tokenizer files loads with a ``NoTokenizerWarning``:
    its prompts must be lists of token ids, and its Generations' text is empty.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if compile not in COMPILE_CHOICES:
        raise InvalidInputError(f"unknown compile setting {compile!r}: choose False, True or 'auto'")
    weights = dtype if isinstance(dtype, str) and dtype in WEIGHT_FORMATS else None
    if compile == "auto":  # compile what can be compiled
        compile = "auto" if backend == "native" and not weights else False
    if backend == "llamacpp":
        if compile or parse_device(device).type != "cpu":
            raise InvalidInputError("the llamacpp backend runs on the CPU, uncompiled: drop compile and device")
        from paragen.models.llamacpp import load_llamacpp

        model = load_llamacpp(name_or_path, dtype, threads)
        if model.tokenizer is None:  # a GGUF file with no tokenizer files beside it
            warn_caller(f"{name_or_path} has no tokenizer files beside it: pass prompts as lists of token ids, and "
                        "read a Generation's tokens (its text is empty)", NoTokenizerWarning)
        return model
    dev = parse_device(device)
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    if backend != "native" and (weights or compile):
        raise InvalidInputError(f"{'compile=True' if compile else weights} runs on the native backend only")
    if weights and compile:
        raise InvalidInputError(f"compile=True runs float32 or float64 models, not {weights}: drop one of the two")
    if weights and dev.type != "cpu":  # their kernels (fbgemm, int8 weight-only) are the CPU's
        raise DeviceError(f"{weights} is a CPU weight format: on {dev} use --dtype float32 or bfloat16")
    return load_dir(resolve(name_or_path), backend, dtype or torch.float32, dev, weights, compile)
