"""Save and load models in the Hugging Face layout (config.json, model.safetensors, tokenizer)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from paragen.errors import ModelLoadError
from paragen.models.native import NativeConfig, NativeModel
from paragen.tokenizer import Tokenizer

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"

_HF_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


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


def native_config(cfg: dict[str, Any]) -> NativeConfig:
    """Map a Hugging Face Llama/Qwen2 config.json onto NativeConfig."""
    kind = cfg.get("model_type")
    if kind not in _HF_ARCH:
        raise ModelLoadError(f"the native backend reads llama and qwen2 models, not '{kind}'; try backend='hf'")
    heads = cfg["num_attention_heads"]
    if cfg.get("head_dim") not in (None, cfg["hidden_size"] // heads):
        raise ModelLoadError("the native backend needs head_dim == hidden_size / num_attention_heads; try backend='hf'")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ModelLoadError(f"rope scaling '{rope.get('rope_type')}' is not supported natively; try backend='hf'")
    eos = cfg.get("eos_token_id")
    d = dict(cfg)
    d.update(
        num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        rope_theta=cfg.get("rope_theta") or rope.get("rope_theta", 10000.0),
        attention_bias=kind == "qwen2" or bool(cfg.get("attention_bias", False)),
        tie_word_embeddings=cfg.get("tie_word_embeddings", kind != "qwen2"),
        eos_token_id=eos[0] if isinstance(eos, list) else eos,
        attention=cfg.get("paragen_attention", "causal"),
        block_size=cfg.get("paragen_block_size"),
        shift=bool(cfg.get("paragen_shift", False)),
    )
    return NativeConfig.from_dict(d)


def hf_config(c: NativeConfig, dtype: torch.dtype) -> dict[str, Any]:
    kind = "qwen2" if c.attention_bias else "llama"
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
        "hidden_act": "silu",
        "attention_bias": c.attention_bias,
        "eos_token_id": c.eos_token_id,
        "bos_token_id": c.eos_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        # paragen-only fields; transformers ignores them.
        "paragen_attention": c.attention,
        "paragen_block_size": c.block_size,
        "paragen_shift": c.shift,
        "mask_token_id": c.mask_token_id,
    }
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

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied: transformers re-ties it on load
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(model.config, dtype), indent=2) + "\n")
        tokenizer.save(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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
    config = native_config(read_config(path))
    model = NativeModel(config).to(dtype)  # cast first: loading into float32 would round float64 weights
    state = load_state(path)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelLoadError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
