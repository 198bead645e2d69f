"""The reference forward: one ``nn.Module`` per Hugging Face Llama submodule, so parameter names
are the Hugging Face ones (``model.layers.0.self_attn.q_proj.weight``) and the state dict saves
to and loads from ``model.safetensors`` unchanged.

This is the path for loading, training and the float64 oracle; the packed inference path
(``packed.py``) and the compiled step (``compiled.py``) are tested against it. The EAGLE
head (``paragen.heads``) is one ``Block``.
"""

from __future__ import annotations

import torch
from torch import nn

from paragen.cache import KVCache
from paragen.models.native.config import NativeConfig
from paragen.models.native.layers import ACTIVATIONS, RMSNorm, apply_rotary, attend


class Attention(nn.Module):
    def __init__(self, c: NativeConfig) -> None:
        super().__init__()
        self.h, self.kv, self.d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.h * self.d, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.kv * self.d, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.kv * self.d, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.h * self.d, c.hidden_size, bias=c.attention_out_bias)

    def forward(self, x, cos, sin, layer: int, cache: KVCache | None, mask, is_causal: bool) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.d).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(B, T, self.kv, self.d).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(B, T, self.kv, self.d).transpose(1, 2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # all live slots [B, Hkv, S, D]
        return self.o_proj(attend(q, k, v, mask, is_causal).transpose(1, 2).reshape(B, T, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, c: NativeConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: NativeConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, layer, cache, mask, is_causal) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, mask, is_causal)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Named like Hugging Face's ``LlamaModel`` so parameter names match ``model.*``."""

    def __init__(self, c: NativeConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, tokens, cos, sin, cache: KVCache | None, masks, causal) -> torch.Tensor:
        """Final-norm hidden states [B, T, H]; ``masks``/``causal``: each layer's attention mask
        and whether it is SDPA's built-in causal one (``NativeModel.attention_masks``)."""
        x = self.embed_tokens(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, cache, masks[i], causal[i])
        return self.norm(x)
