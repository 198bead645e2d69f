"""The packed inference path: the reference forward (``reference.py``) on fused weights, in
fewer ops. q/k/v and gate/up are one matmul each, the loop makes no module calls, RMSNorm is
the fused op and queries and keys rotate together (``layers.apply_rotary_rolled``); weights
may be stored in a format of ``paragen.models.quant``. ``NativeModel.pack`` switches to it;
tests/test_decode_step.py holds it equal to the reference in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from paragen.models.native.config import NativeConfig
from paragen.models.native.layers import ACTIVATIONS, apply_rotary_rolled, attend, rms_norm, signed_sin
from paragen.models.native.reference import Block, Decoder
from paragen.models.quant import WEIGHT_FORMATS, Linear, fp16_exact, make_linear


@dataclass(frozen=True)
class PackedLayer:
    """One block's weights for the packed path: fused q/k/v and gate/up projections."""

    norm1: torch.Tensor
    qkv: Linear
    o: Linear
    norm2: torch.Tensor
    gate_up: Linear
    down: Linear


@dataclass(frozen=True)
class Packed:
    layers: list[PackedLayer]
    lm_head: Linear
    weights: str | None  # a format of paragen.models.quant, None for the model's own dtype
    exact: bool  # computes what the plain path computes (up to summation order)
    dtype: torch.dtype  # the model dtype it was packed for


def _fuse(linears: list[nn.Linear], weights: str | None) -> Linear:
    """One matmul for several projections of the same input (outputs concatenated)."""
    weight = torch.cat([m.weight for m in linears])
    biases = [m.bias for m in linears]
    bias = None if biases[0] is None else torch.cat(biases)
    if weights is None:
        # Share storage: the named parameters become row views of the fused weight.
        start = 0
        for m in linears:
            n = m.weight.shape[0]
            m.weight.data = weight[start : start + n]
            if bias is not None:
                m.bias.data = bias[start : start + n]
            start += n
    return make_linear(weight, bias, weights or "native")


def _pack_layer(block: Block, weights: str | None) -> PackedLayer:
    a, m = block.self_attn, block.mlp
    return PackedLayer(
        norm1=block.input_layernorm.weight.detach(),
        qkv=_fuse([a.q_proj, a.k_proj, a.v_proj], weights),
        o=make_linear(a.o_proj.weight, a.o_proj.bias, weights or "native"),
        norm2=block.post_attention_layernorm.weight.detach(),
        gate_up=_fuse([m.gate_proj, m.up_proj], weights),
        down=make_linear(m.down_proj.weight, m.down_proj.bias, weights or "native"),
    )


def pack_weights(decoder: Decoder, lm_head: nn.Linear, weights: str | None) -> Packed:
    """The packed weights of a model's decoder and output projection (``NativeModel.pack``)."""
    dtype = lm_head.weight.dtype
    with torch.no_grad():
        layers = [_pack_layer(block, weights) for block in decoder.layers]
        head = make_linear(lm_head.weight, None, weights or "native")
    exact = WEIGHT_FORMATS.get(weights, True)
    if weights == "fp16-weights":
        exact = all(fp16_exact(p) for name, p in decoder.named_parameters() if name.endswith("proj.weight"))
        exact = exact and fp16_exact(lm_head.weight)
    return Packed(layers, head, weights, exact, dtype)


def packed_hidden_states(p: Packed, c: NativeConfig, decoder: Decoder, tokens, cos, sin, cache, masks, causal) -> torch.Tensor:
    """``Decoder.forward`` on the packed weights (the embedding and the final norm are the
    decoder's own): the same computation in fewer ops. ``cache``: anything with
    ``write(layer, k, v) -> (k, v)``, a ``KVCache`` or the compiled step's slot writer."""
    B, T = tokens.shape
    h, kv, d, eps = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps
    sin = signed_sin(sin)
    act = ACTIVATIONS[c.hidden_act]
    x = decoder.embed_tokens(tokens)
    for i, layer in enumerate(p.layers):
        qkv = layer.qkv(rms_norm(x, layer.norm1, eps)).view(B, T, h + 2 * kv, d).transpose(1, 2)
        qk, v = qkv.split((h + kv, kv), dim=1)
        q, k = apply_rotary_rolled(qk, cos, sin).split((h, kv), dim=1)  # queries and keys at once
        if cache is not None:
            k, v = cache.write(i, k, v)
        x = x + layer.o(attend(q, k, v, masks[i], causal[i]).transpose(1, 2).reshape(B, T, h * d))
        gate, up = layer.gate_up(rms_norm(x, layer.norm2, eps)).chunk(2, dim=-1)
        x = x + layer.down(act(gate) * up)
    return rms_norm(x, decoder.norm.weight, eps)
