"""Save and load models in the Hugging Face layout (config.json, model.safetensors, tokenizer)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from paragen.errors import ModelLoadError, warn_caller
from paragen.models.native import ACTIVATIONS, NativeConfig, NativeModel
from paragen.tokenizer import Tokenizer, has_tokenizer

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"

_HF_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def builtin_models() -> dict[str, Path]:
    """Built-in model names and their directories (shipped inside the package)."""
    if not BUILTIN_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUILTIN_DIR.iterdir()) if (p / "config.json").exists()}


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A built-in name or a directory; a clear error for anything else."""
    builtins = builtin_models()
    if str(name_or_path) in builtins:
        return builtins[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_dir():
        known = ", ".join(builtins) or "none"
        raise ModelLoadError(f"model '{name_or_path}' is neither a directory nor a built-in model (built-in: {known})")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json: is it a Hugging Face model directory?")
    return path


def read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {e}") from e


# transformers' defaults (the class defaults of LlamaConfig, Qwen2Config and MistralConfig;
# tests/test_parity.py checks them against the installed transformers) for the fields the
# native backend reads: a config.json that leaves one out means what it means to transformers.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
    "qwen2": {"hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 4096,
              "max_window_layers": 28},
    "mistral": {"hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": False, "sliding_window": 4096},
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Fields read below (or by NativeConfig), per architecture.
_READ = {
    *_REQUIRED, "model_type", "num_key_value_heads", "head_dim", "rope_theta", "rope_parameters", "rope_scaling",
    "eos_token_id", "mask_token_id", "paragen_attention", "paragen_block_size", "paragen_shift", "layer_types",
    *(k for d in _DEFAULTS.values() for k in d),
}
# Fields that do not change inference logits: bookkeeping, training-only settings (dropout,
# initialisation), token ids used by generation loops, and old generation defaults.
_IGNORED = {
    "architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path", "use_cache",
    "initializer_range", "attention_dropout", "pretraining_tp", "bos_token_id", "pad_token_id", "sep_token_id",
    "tokenizer_class", "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
    "problem_type", "max_length", "min_length", "do_sample", "temperature", "top_k", "top_p", "num_beams",
    "repetition_penalty", "early_stopping", "length_penalty", "no_repeat_ngram_size", "num_return_sequences",
    "is_decoder", "is_encoder_decoder", "add_cross_attention", "tie_encoder_decoder", "chunk_size_feed_forward",
}
_ROPE_KEYS = {"rope_type", "type", "rope_theta"}


def _refuse(what: str) -> ModelLoadError:
    return ModelLoadError(f"{what}: not supported by the native backend; try backend='hf'")


def _layer_types(kind: str, cfg: dict[str, Any]) -> tuple[int | None, tuple[str, ...] | None]:
    """(sliding_window, layer_types) as transformers derives them for this architecture."""
    window = cfg["sliding_window"] if kind != "llama" else None
    if kind == "mistral":  # every layer slides when a window is set (MistralModel builds one mask)
        return window, None
    if kind == "llama":
        return None, None
    # Qwen2Config: the window exists only with use_sliding_window; by default layers from
    # max_window_layers on slide, unless config.json lists layer_types itself.
    window = window if cfg["use_sliding_window"] else None
    types = cfg.get("layer_types") or [
        "sliding_attention" if window is not None and i >= cfg["max_window_layers"] else "full_attention"
        for i in range(cfg["num_hidden_layers"])
    ]
    unknown = set(types) - {"full_attention", "sliding_attention"}
    if unknown or len(types) != cfg["num_hidden_layers"]:
        raise _refuse(f"layer_types {sorted(set(types))} (for {cfg['num_hidden_layers']} layers)")
    if "sliding_attention" in types and window is None:
        raise ModelLoadError("layer_types has sliding_attention layers but no sliding window is set (use_sliding_window)")
    return window, tuple(types)


def native_config(cfg: dict[str, Any]) -> NativeConfig:
    """Map a Hugging Face Llama/Qwen2/Mistral config.json onto NativeConfig, refusing what it cannot compute.

    Every field that changes the logits is either read here or refused with a ModelLoadError;
    fields missing from config.json take transformers' default for the architecture.
    """
    kind = cfg.get("model_type")
    if kind not in _DEFAULTS:
        raise ModelLoadError(f"the native backend reads llama, qwen2 and mistral models, not '{kind}'; try backend='hf'")
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ModelLoadError(f"config.json has no {', '.join(missing)}: is it a complete {kind} config?")
    # Any other field is refused unless it is switched off (null or false): transformers'
    # own class would ignore it, but a model that sets it likely means it.
    unknown = sorted(k for k, v in cfg.items() if k not in _READ | _IGNORED and v is not None and v is not False)
    if unknown:
        raise _refuse(f"config.json fields {', '.join(unknown)} are not read")
    cfg = {**_DEFAULTS[kind], **cfg}
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise _refuse(f"rope scaling '{rope_type}'")
    extra = sorted(k for k, v in rope.items() if k not in _ROPE_KEYS and v is not None)
    if extra and not (extra == ["partial_rotary_factor"] and rope["partial_rotary_factor"] == 1.0):
        raise _refuse(f"rope parameters {', '.join(extra)}")
    if cfg["hidden_act"] not in ACTIVATIONS:
        raise _refuse(f"hidden_act '{cfg['hidden_act']}'")
    window, types = _layer_types(kind, cfg)
    eos = cfg.get("eos_token_id")
    # Qwen2 always has q/k/v biases and Mistral never; Llama's attention_bias also biases o_proj.
    attention_bias = kind == "qwen2" or (kind == "llama" and bool(cfg["attention_bias"]))
    return NativeConfig.from_dict({
        **cfg,
        "num_key_value_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": cfg.get("head_dim") or cfg["hidden_size"] // heads,
        # rope_parameters wins over a legacy top-level rope_theta, as transformers reads them
        "rope_theta": rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0,
        "attention_bias": attention_bias,
        "attention_out_bias": kind == "llama" and attention_bias,
        "mlp_bias": kind == "llama" and bool(cfg.get("mlp_bias")),
        "sliding_window": window,
        "layer_types": types,
        "eos_token_id": eos[0] if isinstance(eos, list) else eos,
        "attention": cfg.get("paragen_attention") or "causal",
        "block_size": cfg.get("paragen_block_size"),
        "shift": bool(cfg.get("paragen_shift", False)),
    })


def _hf_kind(c: NativeConfig) -> str:
    """The transformers architecture that computes exactly what this NativeConfig computes."""
    qwen2 = c.attention_bias and not c.attention_out_bias and not c.mlp_bias
    if c.sliding_window is not None and c.layer_types is None and not (c.attention_bias or c.mlp_bias):
        return "mistral"
    if c.sliding_window is not None and c.layer_types is not None and qwen2:
        return "qwen2"
    if c.sliding_window is None and qwen2:
        return "qwen2"
    if c.sliding_window is None and c.attention_bias == c.attention_out_bias:
        return "llama"
    raise ValueError("no transformers architecture computes this combination of biases and sliding windows")


def hf_config(c: NativeConfig, dtype: torch.dtype) -> dict[str, Any]:
    kind = _hf_kind(c)
    cfg = {
        "architectures": [_HF_ARCH[kind]],
        "model_type": kind,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "hidden_act": c.hidden_act,
        "attention_bias": c.attention_bias,
        "mlp_bias": c.mlp_bias,
        "sliding_window": c.sliding_window,
        "eos_token_id": c.eos_token_id,
        "bos_token_id": c.eos_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        # paragen-only fields; transformers ignores them.
        "paragen_attention": c.attention,
        "paragen_block_size": c.block_size,
        "paragen_shift": c.shift,
        "mask_token_id": c.mask_token_id,
    }
    if kind == "qwen2" and c.sliding_window is not None:
        cfg.update(use_sliding_window=True, layer_types=list(c.layer_types))
    return cfg


def save_model(
    model: NativeModel,
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    dtype: torch.dtype = torch.float16,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a complete model directory atomically: all files appear at once or none do."""
    from safetensors.torch import save_file

    with atomic_directory(out) as tmp:
        state = {k: v.detach().to(dtype).cpu().contiguous() for k, v in model.state_dict().items()}  # from any device
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied: transformers re-ties it on load
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(model.config, dtype), indent=2) + "\n")
        tokenizer.save(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out)


def follow_umask(directory: Path) -> None:
    """Give a saved model directory and its files the modes a plain mkdir and open would
    (the user's umask): ``save_model`` builds it in a private temporary directory (0700)
    and safetensors writes its file 0600. The umask is read by making a probe directory,
    since ``os.umask`` can only be read by setting it (process-wide)."""
    probe = directory.parent / f".{directory.name}.umask-probe"
    probe.mkdir()
    dir_mode = probe.stat().st_mode & 0o777
    probe.rmdir()
    directory.chmod(dir_mode)
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(dir_mode & 0o666)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Build a directory in a temporary one beside ``out`` and rename it into place when the
    block ends: every file appears at once (with the user's umask), replacing an older
    ``out``, or, on any error or interrupt, nothing does."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        follow_umask(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Read every *.safetensors file in a directory, with a clear error on corruption."""
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no *.safetensors weights (pytorch_model.bin is not read; convert it)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as e:  # safetensors raises SafetensorError / OSError on bad files
            raise ModelLoadError(f"{f} is corrupt or truncated ({e}); re-download or re-save the model") from e
    return state


def load_native(path: Path, dtype: torch.dtype = torch.float32) -> NativeModel:
    raw = read_config(path)
    config = native_config(raw)
    model = NativeModel(config).to(dtype)  # cast first: loading into float32 would round float64 weights
    state = load_state(path)
    head, embed = state.pop("lm_head.weight", None), state.get("model.embed_tokens.weight")
    if config.tie_word_embeddings and head is not None and not (embed is not None and torch.equal(head, embed)):
        raise ModelLoadError(
            f"{path}: config.json ties the output head to the embeddings (tie_word_embeddings) but the weights hold "
            "a different lm_head.weight: set \"tie_word_embeddings\": false if the head is its own"
        )
    if not config.tie_word_embeddings:
        if head is None:
            kind = raw["model_type"]
            said = "false" if "tie_word_embeddings" in raw else f"absent, which transformers reads as false for {kind}"
            raise ModelLoadError(
                f"{path}: the weights have no lm_head.weight but tie_word_embeddings is {said}: "
                "set \"tie_word_embeddings\": true in config.json if the head shares the embeddings"
            )
        state["lm_head.weight"] = head
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    eos = raw.get("eos_token_id")
    if isinstance(eos, list) and eos:  # NativeConfig keeps one id; generation stops at any of them
        model.info = replace(model.info, eos_ids=tuple(eos))
    return model.eval()


class NoTokenizerWarning(UserWarning):
    """A model loaded without tokenizer files: token-id prompts only, and no text out."""


def load_dir(path: Path, backend: str = "native", dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu", weights: str | None = None, compile: bool | str = False) -> Any:
    """A model directory on the native or hf backend, with its tokenizer, on ``device``
    (arguments checked by ``paragen.models.load``; the llamacpp backend converts from this too)."""
    tokenizer = Tokenizer.from_dir(path) if has_tokenizer(path) else None
    if backend == "native":
        model = load_native(path, dtype).to(device).pack(weights)  # packed (and compiled) where it runs
        if compile:
            model.compile_decode(auto=compile == "auto")
    else:
        from paragen.models.hf import HFModel

        model = HFModel.from_dir(path, dtype)
        model.module.to(device)
    model.tokenizer = tokenizer
    model.name = path.name
    if tokenizer is None:
        warn_caller(f"{path} has no tokenizer files: pass prompts as lists of token ids, and read a Generation's "
                    "tokens (its text is empty: nothing can decode them)", NoTokenizerWarning)
        return model
    if model.info.eos_ids == () and tokenizer.eos_id is not None:
        model.info = replace(model.info, eos_ids=(tokenizer.eos_id,))
    if model.info.mask_id is None and tokenizer.mask_id is not None:
        model.info = replace(model.info, mask_id=tokenizer.mask_id)
    return model
