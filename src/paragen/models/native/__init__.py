"""Native backend: a lean Llama-style decoder in plain PyTorch.

RMSNorm, rotary positions (the Hugging Face "rotate half" layout), a gated MLP (SwiGLU or
another activation of transformers' table), grouped-query attention, optional biases
(Qwen2's q/k/v, Llama's ``attention_bias`` and ``mlp_bias``), optional sliding-window
layers (Mistral, Qwen2). Parameter names follow the Hugging Face Llama layout, so the state
dict saves to and loads from ``model.safetensors`` unchanged.

One forward per purpose, each in its own file, all built from the same ``layers``:

- ``layers``: activations, RMSNorm, rotary tables and their application, attention with the
  contract's mask (shared with the EAGLE head, ``paragen.heads``);
- ``config``: ``NativeConfig``;
- ``reference``: the ``nn.Module`` forward (loading, training, the float64 oracle);
- ``packed``: the inference path on fused weights (``NativeModel.pack``);
- ``compiled``: the packed path compiled with static shapes (``NativeModel.compile_decode``);
- ``model``: ``NativeModel``, the model contract, which sends each call down one of them.
"""

from paragen.models.native.compiled import TOKEN_BUCKETS, token_bucket
from paragen.models.native.config import NativeConfig
from paragen.models.native.layers import ACTIVATIONS, RMSNorm, gelu_tanh_formula, rms_norm, rotate_half
from paragen.models.native.model import NativeModel
from paragen.models.native.packed import Packed, PackedLayer
from paragen.models.native.reference import MLP, Attention, Block, Decoder

__all__ = ["ACTIVATIONS", "MLP", "TOKEN_BUCKETS", "Attention", "Block", "Decoder", "NativeConfig", "NativeModel",
           "Packed", "PackedLayer", "RMSNorm", "gelu_tanh_formula", "rms_norm", "rotate_half", "token_bucket"]
