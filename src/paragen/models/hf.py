"""transformers adapter: any local causal LM behind the paragen model contract.

transformers appends every forward's keys/values to its cache; the adapter keeps the
contract's "caller commits" rule by remembering the committed length and cropping the
pending entries before the next forward.
"""

from __future__ import annotations

from pathlib import Path

import torch

from paragen.errors import ModelLoadError
from paragen.models.base import Model, ModelInfo, expand_mask


class HFCache:
    """Contract cache over a transformers ``DynamicCache``: same commit/keep/truncate API."""

    def __init__(self, config) -> None:
        from transformers import DynamicCache

        self.inner = DynamicCache(config=config)
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

    @classmethod
    def from_dir(cls, path: Path, dtype: torch.dtype = torch.float32) -> HFModel:
        from transformers import AutoModelForCausalLM

        try:
            module = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, local_files_only=True, attn_implementation="sdpa"
            )
        except Exception as e:
            raise ModelLoadError(f"transformers could not load {path}: {e}") from e
        return cls(module)

    @property
    def dtype(self) -> torch.dtype:
        return self.module.dtype

    def new_cache(self, batch: int = 1, max_length: int | None = None) -> HFCache:
        return HFCache(self.module.config)

    def forward(self, tokens, positions, cache=None, mask=None) -> torch.Tensor:
        past = 0
        if cache is not None:
            cache.drop_pending()
            past = cache.length
        T = tokens.shape[1]
        full = expand_mask(mask, past, T, causal=self.info.attention == "causal", device=tokens.device)
        if full is None:  # one token, or everything visible: an explicit all-true mask
            full = torch.ones(tokens.shape[0], 1, T, past + T, dtype=torch.bool, device=tokens.device)
        # transformers takes a prepared 4D mask as additive floats: 0 allowed, min disallowed.
        additive = torch.zeros(full.shape, dtype=self.dtype, device=tokens.device)
        additive.masked_fill_(~full, torch.finfo(self.dtype).min)
        out = self.module(
            input_ids=tokens,
            position_ids=positions,
            attention_mask=additive.expand(tokens.shape[0], -1, -1, -1),
            past_key_values=cache.inner if cache is not None else None,
            use_cache=cache is not None,
        )
        return out.logits
