"""transformers adapter: any local causal LM behind the paragen model contract.

transformers appends every forward's keys/values to its cache; the adapter keeps the
contract's "caller commits" rule by remembering the committed length and cropping the
pending entries before the next forward.

Every forward passes an explicit 4D mask, which transformers uses as given: so the adapter
must itself build whatever the architecture's own masks would add. It does so for sliding
windows (on every layer, as Mistral and Phi-3 slide, or on the layers ``layer_types`` names,
as Qwen2 and Gemma-2 do) and refuses attention kinds it cannot build.
"""

from __future__ import annotations

from pathlib import Path

import torch

from paragen.cache import OneRowCache
from paragen.errors import ModelLoadError
from paragen.models.base import Model, ModelInfo, expand_mask, window_mask
from paragen.quiet import quiet_transformers

# Layer kinds whose masks the adapter builds (transformers' layer_types names).
LAYER_KINDS = ("full_attention", "sliding_attention")


class HFCache(OneRowCache):
    """Contract cache over a transformers ``DynamicCache``: same commit/keep/truncate API."""

    def __init__(self) -> None:
        from transformers import DynamicCache

        # No config: every layer keeps every slot. With a config, sliding-window layers would
        # drop old slots, and the adapter's masks and crops address slots by position.
        self.inner = DynamicCache()
        self.length = 0

    def _stored(self) -> int:
        return self.inner.get_seq_length()

    def drop_pending(self) -> None:
        extra = self._stored() - self.length
        if extra > 0:
            self.inner.crop(-extra)

    def commit(self, n: int) -> None:
        if n < 0 or self.length + n > self._stored():
            raise IndexError(f"cannot commit {n} slots at length {self.length}")
        self.length += n

    def keep(self, indices) -> None:
        idx = torch.as_tensor(indices, dtype=torch.long)
        for layer in self.inner.layers:
            for name in ("keys", "values"):
                buf = getattr(layer, name)
                kept = buf.index_select(-2, (self.length + idx).to(buf.device))
                setattr(layer, name, torch.cat([buf[..., : self.length, :], kept], dim=-2))
        self.length += int(idx.numel())

    def truncate(self, n: int) -> None:
        if not 0 <= n <= self.length:
            raise IndexError(f"cannot truncate to {n}: length is {self.length}")
        # Like KVCache, the slots past n stay readable until the next forward drops them,
        # so truncate(n) followed by keep(...) can compact a tree path written earlier.
        self.length = n


class HFModel(Model):
    """Wraps ``transformers.AutoModelForCausalLM`` loaded from a local directory."""

    def __init__(self, module) -> None:
        self.module = module.eval()
        cfg = module.config
        eos = cfg.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        self.info = ModelInfo(
            vocab_size=cfg.vocab_size,
            max_length=getattr(cfg, "max_position_embeddings", 2048),
            eos_ids=eos_ids,
            mask_id=getattr(cfg, "mask_token_id", None),
            # paragen's diffusion models say so in config.json; every mask is passed explicitly
            # below, so transformers runs them bidirectionally too.
            attention=getattr(cfg, "paragen_attention", None) or "causal",
            block_size=getattr(cfg, "paragen_block_size", None),
            shift=bool(getattr(cfg, "paragen_shift", False)),
        )
        self.tokenizer = None
        self.window, self.per_layer = sliding_window(cfg)
        if self.window is not None and self.info.attention != "causal":
            raise ModelLoadError("sliding-window attention is implemented for causal models only")

    @classmethod
    def from_dir(cls, path: Path, dtype: torch.dtype = torch.float32) -> HFModel:
        from transformers import AutoModelForCausalLM

        try:
            # transformers' own default attention (SDPA, or eager where the architecture needs
            # it, e.g. Gemma-2's soft-capping): the forward transformers itself would run.
            with quiet_transformers():  # no "Loading weights" bar inside paragen's own output
                module = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        except Exception as e:
            raise ModelLoadError(f"transformers could not load {path}: {e}") from e
        impl = module.config._attn_implementation
        if impl not in ("sdpa", "eager"):
            raise ModelLoadError(f"{path}: attention '{impl}' ignores explicit masks; not supported by the hf adapter")
        return cls(module)

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    def new_cache(self, batch: int = 1, max_length: int | None = None) -> HFCache:
        return HFCache()

    def additive(self, allowed: torch.Tensor, batch: int) -> torch.Tensor:
        """A bool mask as transformers takes a prepared 4D mask: additive floats, 0 allowed, min disallowed."""
        out = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        out.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        return out.expand(batch, -1, -1, -1)

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.module.get_output_embeddings()
        if getattr(out, "bias", None) is not None:
            raise ModelLoadError("this model's output projection has a bias: prediction heads support bias-free ones only")
        return self.module.get_input_embeddings().weight.detach(), out.weight.detach()

    def forward(self, tokens, positions, cache=None, mask=None, return_hidden=False):
        past = 0
        if cache is not None:
            cache.drop_pending()
            past = cache.length
        B, T = tokens.shape
        full = expand_mask(mask, past, T, causal=self.info.attention == "causal", device=tokens.device)
        if full is None:  # one token, or everything visible: an explicit all-true mask
            full = torch.ones(1, 1, T, past + T, dtype=torch.bool, device=tokens.device)
        attention = self.additive(full, B)
        if self.window is not None:
            windowed = self.additive(window_mask(full, positions, past, self.window), B)
            # Per-layer architectures take one mask per layer kind, as their own forward builds them.
            attention = {"full_attention": attention, "sliding_attention": windowed} if self.per_layer else windowed
        out = self.module(
            input_ids=tokens,
            position_ids=positions,
            attention_mask=attention,
            cache=cache.inner if cache is not None else None,  # transformers >= 5.24 (past_key_values before)
            use_cache=cache is not None,
            output_hidden_states=return_hidden,
        )
        # transformers' last hidden state is the final norm's output (capture_outputs ties it
        # to last_hidden_state); tests/test_models.py checks it against the native backend.
        return (out.logits, out.hidden_states[-1]) if return_hidden else out.logits


def sliding_window(cfg) -> tuple[int | None, bool]:
    """(window, per_layer) of a transformers config: the window its own masks would apply.

    ``per_layer``: the architecture names each layer's kind in ``layer_types`` (Qwen2,
    Gemma-2) and takes a mask per kind; otherwise a window applies to every layer (Mistral,
    Phi-3, which build one sliding mask whenever ``sliding_window`` is set).
    """
    for name in ("attention_chunk_size", "use_bidirectional_attention"):
        if getattr(cfg, name, None):
            raise ModelLoadError(f"config field {name} changes the attention masks: not supported by the hf adapter")
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types is None:
        return window, False
    unknown = sorted(set(types) - set(LAYER_KINDS))
    if unknown:
        raise ModelLoadError(f"attention layer types {', '.join(unknown)} are not supported by the hf adapter")
    if "sliding_attention" not in types:
        return None, False
    if window is None:
        raise ModelLoadError("layer_types names sliding_attention layers but the config sets no sliding_window")
    return window, True
