"""``NativeConfig``: the shape of a native model, as its ``config.json`` records it (the Hugging
Face Llama/Qwen2/Mistral fields paragen reads, plus paragen's attention kind and diffusion ids)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from paragen.models.native.layers import ACTIVATIONS


@dataclass(frozen=True)
class NativeConfig:
    vocab_size: int
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # q/k/v bias (Qwen2; Llama's attention_bias also sets attention_out_bias)
    attention_out_bias: bool = False  # o_proj bias
    mlp_bias: bool = False
    hidden_act: str = "silu"  # a key of ACTIVATIONS
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    # Sliding-window attention (Mistral, Qwen2): a key is visible iff its position is within
    # `sliding_window` of the query's. `layer_types` names each layer "full_attention" or
    # "sliding_attention"; None with a window means every layer slides (Mistral).
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    attention: str = "causal"  # "causal" | "bidirectional" | "block_causal"
    block_size: int | None = None
    shift: bool = False  # diffusion models: logits at i predict token i + 1 (see ModelInfo)
    eos_token_id: int | None = None
    mask_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.head_dim is None:  # frozen: the derived default is written once, here
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be at least 1, got {self.sliding_window}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act '{self.hidden_act}' is not one of {', '.join(ACTIVATIONS)}")

    def window(self, layer: int) -> int | None:
        """The sliding window of one layer, or None for full attention."""
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    def num_parameters(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        layer = 2 * h * q + 2 * h * kv + 3 * h * i + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * layer + h

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NativeConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

