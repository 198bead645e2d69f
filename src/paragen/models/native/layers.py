"""The pieces every native forward is made of, written once: activations, RMSNorm, rotary
positions, attention over a cache with the contract's mask. The reference modules, the packed
path, the compiled step and the EAGLE head all compute through these, so they agree by
construction; where two forms of one op exist (module and fused RMSNorm; "rotate half" and
"roll" rotary) both live here, with the tests that hold them equal bit for bit.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from paragen.models.base import expand_mask


def gelu_tanh_formula(x: torch.Tensor) -> torch.Tensor:
    """transformers' "gelu_new" (OpenAI GPT's GELU), written out: it differs from torch's tanh GELU in the last bits."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# The MLP activations of transformers' ACT2FN that Llama-family configs name, computed as
# transformers computes them (transformers/activations.py); any other name is refused on load.
ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,  # exact (erf) GELU
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "gelu_new": gelu_tanh_formula,
    "relu": F.relu,
}


# ------------------------------------------------------------------ RMSNorm


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the model dtype, exactly as Hugging Face Llama/Qwen2
        # do, so both backends agree bit for bit in float32 and float64.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm.forward`` as one fused op in float32 (equal to it bit for bit; checked by
    tests/test_decode_step.py), and normalised in float32 for other dtypes, as RMSNorm does."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)


# ------------------------------------------------------------------ rotary positions


def inv_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """Rotary frequencies [D/2] in float32, as Hugging Face computes them (parity in every dtype).
    Modules hold them as a non-persistent buffer, so a cast of the module casts them too."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rope_tables(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [B, 1, T, D] of positions [B, T] (angles in float32, then the model dtype)."""
    freqs = positions.float()[..., None] * inv_freq.float()  # [B, T, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary positions in the Hugging Face "rotate half" layout (the reference form)."""
    return x * cos + rotate_half(x) * sin


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated, for ``apply_rotary_rolled``."""
    d = sin.shape[-1]
    return torch.cat((-sin[..., : d // 2], sin[..., d // 2 :]), dim=-1)


def apply_rotary_rolled(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """``apply_rotary`` in fewer ops, bit for bit: rotate_half(x) * sin == x.roll(D/2) * signed_sin(sin)
    (a negation is exact), so queries and keys stacked on one axis rotate in one go."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


# ------------------------------------------------------------------ attention


def call_mask(mask: torch.Tensor | None, past: int, t: int, causal: bool, device) -> tuple[torch.Tensor | None, bool]:
    """The attention mask of a call of ``t`` tokens after ``past`` cached ones, from the contract's
    ``mask`` (``models.base``), and whether it is SDPA's built-in causal one: a causal mask over a
    fresh sequence needs no mask tensor."""
    is_causal = mask is None and causal and past == 0 and t > 1
    return (None if is_causal else expand_mask(mask, past, t, causal, device)), is_causal


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """Attention of q [B, H, T, D] over k, v [B, Hkv, S, D]: grouped-query heads are shared by
    SDPA itself (``enable_gqa``), never materialised as repeated key/value heads."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=k.shape[1] != q.shape[1])
