"""Prediction heads that ride on a frozen target: modules only (no decoding loop).

Notation: ``h_t`` is the target's final-norm hidden state at position t (``forward(...,
return_hidden=True)``), from which the target's own output projection predicts x_{t+1}.
Head j (0-based, ``K`` heads) predicts x_{t+j+2}: the token after the target's own next
token, then the one after that, and so on. Every kind reads out through the target's
output projection ``proj`` [V, H] (and, for hydra and eagle, its input embedding
``embed`` [V, H]); both are the target's own tensors held as non-persistent buffers, so
they are never trained, never saved, and cost no memory of their own.

- ``blockwise`` (Stern et al. 2018, section 3): each head is a feed-forward layer with a
  residual connection, ``h + W2 relu(W1 h)``, then the shared projection.
- ``medusa`` (Cai et al. 2024, Medusa-1): each head is a ResBlock ``h + SiLU(W h)`` then
  the projection. Medusa-1 gives every head its own lm_head initialised from the target's;
  paragen shares the target's frozen one instead, which keeps a head at H^2 parameters
  instead of H^2 + V H (a 4096-token vocabulary would make the copy 10x the head).
- ``hydra`` (Ankner et al. 2024): head j also reads the embeddings of x_{t+1}..x_{t+j+1}
  (the target's next token and the tokens drafted before it), so its drafts follow the
  path they extend: ``h + SiLU(W [h; e_1; ...; e_{j+1}])`` then the projection.
- ``eagle`` (Li et al. 2024): a one-layer decoder over the target's features. Its input at
  t is ``fc([h_t; embed(x_{t+1})])``; one transformer layer (own small KV cache, RoPE) turns
  it into a predicted feature for t+1, read out by the projection as x_{t+2}; drafting
  further feeds the predicted feature back with the drafted token (autoregression on
  features).

``train_features(hidden [B, L, H], tokens [B, L]) -> [B, L, K, H]``: entry (t, j) is head j's
output feature for x_{t+j+2} given the true prefix x_{<=t} (teacher forcing), for training;
``train_logits`` reads them all out ([B, L, K, V]). Training reads out a sample of them: the
vocabulary projection is most of a head's cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paragen.cache import KVCache
from paragen.models.native.compiled import (
    HotGraphs,
    cache_length,
    compile_drafter,
    compiled_drafter_forward,
    dummy_call,
    fits,
    graph_key,
    timed_step,
    warm_up,
)
from paragen.models.native.config import NativeConfig
from paragen.models.native.layers import call_mask, inv_frequencies, rope_tables
from paragen.models.native.reference import Block

KINDS = ("blockwise", "medusa", "hydra", "eagle")


@dataclass(frozen=True)
class HeadsConfig:
    """What ``heads.json`` records: the kind, its shape, and the target it was trained on
    (``target``: the fingerprint of ``paragen.heads.io.fingerprint``)."""

    kind: str
    num_heads: int  # K: tokens drafted beyond the target's own next token (eagle: 1, it drafts by autoregression)
    hidden_size: int
    vocab_size: int
    inner_size: int | None = None  # blockwise: the feed-forward width (default: hidden_size)
    num_attention_heads: int | None = None  # eagle: its layer's attention heads (default: hidden_size // 64, >= 1)
    intermediate_size: int | None = None  # eagle: its layer's MLP width (default: 2 * hidden_size)
    rope_theta: float = 10000.0  # eagle
    rms_norm_eps: float = 1e-5  # eagle
    target: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown head kind '{self.kind}': choose one of {', '.join(KINDS)}")
        if self.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {self.num_heads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadsConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class Heads(nn.Module):
    """Base: holds the target's embedding and projection as frozen, unsaved buffers.

    ``calls`` counts drafting calls (``forward``; hydra's ``head``), as ``CountedModel``
    counts a model's: a decode reads it before and after each step."""

    kind = ""

    def __init__(self, config: HeadsConfig, embed: torch.Tensor, proj: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.calls = 0
        self.register_buffer("embed", embed.detach(), persistent=False)  # [V, H]
        self.register_buffer("proj", proj.detach(), persistent=False)  # [V, H]

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """The target's own output projection: [..., H] -> [..., V]."""
        return x @ self.proj.T

    def init_weights(self, seed: int = 0, std: float = 0.02, zero_out: bool = True) -> Heads:
        """Random matrices (std), zero biases; ``zero_out`` zeroes each head's last residual
        branch, so an untrained head starts as the target's own next-token prediction
        (Medusa's initialisation). Tests pass ``zero_out=False`` for random, mostly wrong heads."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0 if name.endswith("norm.weight") else 0.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
            for lin in self.residual_outputs() if zero_out else ():
                lin.weight.zero_()
        return self

    def residual_outputs(self) -> list[nn.Linear]:
        """The last layer of each head's residual branch."""
        return []

    def train_features(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Every head's output feature at every position [B, L, K, H] (see the module docstring)."""
        raise NotImplementedError

    def train_logits(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``train_features`` read out: [B, L, K, V]."""
        return self.readout(self.train_features(hidden, tokens))


class OneStateHeads(Heads):
    """Heads that read one hidden state each, independently of the tokens before theirs."""

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., K, H]: every head's output feature."""
        raise NotImplementedError

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of every head [..., K, V] from hidden states [..., H]."""
        self.calls += 1
        return self.readout(self.features(hidden))

    def train_features(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.features(hidden)


class Blockwise(OneStateHeads):
    """Stern et al.'s heads: ``h + W2 relu(W1 h + b1) + b2`` per head, then ``proj``."""

    kind = "blockwise"

    def __init__(self, config: HeadsConfig, embed: torch.Tensor, proj: torch.Tensor) -> None:
        super().__init__(config, embed, proj)
        H, inner = config.hidden_size, config.inner_size or config.hidden_size
        self.w1 = nn.ModuleList(nn.Linear(H, inner) for _ in range(config.num_heads))
        self.w2 = nn.ModuleList(nn.Linear(inner, H) for _ in range(config.num_heads))

    def residual_outputs(self) -> list[nn.Linear]:
        return list(self.w2)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.stack([hidden + w2(F.relu(w1(hidden))) for w1, w2 in zip(self.w1, self.w2)], dim=-2)


class Medusa(OneStateHeads):
    """Medusa-1 heads: one ResBlock ``h + SiLU(W h + b)`` each, then the shared ``proj``."""

    kind = "medusa"

    def __init__(self, config: HeadsConfig, embed: torch.Tensor, proj: torch.Tensor) -> None:
        super().__init__(config, embed, proj)
        H = config.hidden_size
        self.res = nn.ModuleList(nn.Linear(H, H) for _ in range(config.num_heads))

    def residual_outputs(self) -> list[nn.Linear]:
        return list(self.res)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.stack([hidden + F.silu(lin(hidden)) for lin in self.res], dim=-2)


class Hydra(Heads):
    """Hydra heads: head j reads ``[h; embed(x_{t+1}); ...; embed(x_{t+j+1})]``."""

    kind = "hydra"

    def __init__(self, config: HeadsConfig, embed: torch.Tensor, proj: torch.Tensor) -> None:
        super().__init__(config, embed, proj)
        H = config.hidden_size
        self.res = nn.ModuleList(nn.Linear((j + 2) * H, H) for j in range(config.num_heads))

    def residual_outputs(self) -> list[nn.Linear]:
        return list(self.res)

    def head_feature(self, j: int, hidden: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Head j's output feature [..., H] from hidden [..., H] and the j + 1 tokens before its own [..., j + 1]."""
        e = self.embed[prev].flatten(-2)  # [..., (j + 1) H]
        return hidden + F.silu(self.res[j](torch.cat([hidden, e], dim=-1)))

    def head(self, j: int, hidden: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Head j's logits [..., V] (``head_feature`` read out)."""
        self.calls += 1
        return self.readout(self.head_feature(j, hidden, prev))

    def train_features(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        B, L = tokens.shape
        # next[:, t, i] = x_{t+1+i} (zero past the window: those entries are masked out of the loss)
        pad = torch.cat([tokens, tokens.new_zeros(B, self.num_heads + 1)], dim=1)
        nxt = torch.stack([pad[:, 1 + i : 1 + i + L] for i in range(self.num_heads)], dim=-1)  # [B, L, K]
        return torch.stack([self.head_feature(j, hidden, nxt[..., : j + 1]) for j in range(self.num_heads)], dim=-2)


class Eagle(Heads):
    """A one-layer decoder on the target's features: ``fc([h_t; embed(x_{t+1})])`` -> Block -> feature of t+1."""

    kind = "eagle"

    def __init__(self, config: HeadsConfig, embed: torch.Tensor, proj: torch.Tensor) -> None:
        super().__init__(config, embed, proj)
        H = config.hidden_size
        heads = config.num_attention_heads or max(1, H // 64)
        self.layer_config = NativeConfig(
            vocab_size=config.vocab_size, hidden_size=H, intermediate_size=config.intermediate_size or 2 * H,
            num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=heads,
            rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps,
        )
        self.fc = nn.Linear(2 * H, H)
        self.layer = Block(self.layer_config)
        self.register_buffer("inv_freq", inv_frequencies(self.layer_config.head_dim, config.rope_theta), persistent=False)
        self.compiled: dict[int, Callable[..., torch.Tensor]] | None = None  # compile_drafter()
        self.hot: HotGraphs | None = None

    def residual_outputs(self) -> list[nn.Linear]:
        return [self.layer.self_attn.o_proj, self.layer.mlp.down_proj]

    def compile_drafter(self, auto: bool = False) -> Eagle:
        """Run the drafter's calls after its prefill as the target's compiled step runs
        (``paragen.models.native.compiled``: padded to a few sizes, one graph per bucket; ``auto``:
        compiled once a graph's calls repay it). Its calls are small (one layer), so per-op
        overhead is most of their time."""
        self.compiled = compile_drafter(self)
        self.hot = HotGraphs.on(auto, self.fc.weight.device)
        return self

    def warm_up(self, tokens: int) -> int:
        """Compile now the drafter graphs of calls of up to ``tokens`` (``compiled.warm_up``); 0 if not compiled."""
        def call(batch: int, n: int, masked: bool) -> None:
            cache = self.new_cache(1)
            ids, positions, mask = dummy_call(cache, n, masked)
            self(self.proj.new_zeros(1, n, self.proj.shape[1]), ids, positions, cache=cache, mask=mask)

        return 0 if self.compiled is None else warm_up(tokens, 1, call, self.hot)

    def new_cache(self, max_length: int) -> KVCache:
        c = self.layer_config
        if self.compiled is not None:  # room for a padded call's pads
            max_length = cache_length(max_length)
        return KVCache(1, 1, c.num_key_value_heads, c.head_dim, max_length, self.fc.weight.dtype, self.fc.weight.device)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, cache=None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted features [B, T, H] of positions + 1, from features [B, T, H] at positions and
        the tokens one position later [B, T]. ``mask`` as in the model contract ([B|1, T, S] or None):
        rotary positions and masks as the native backend's (``paragen.models.native.layers``)."""
        self.calls += 1
        if self.compiled is not None and cache is not None and not self.training and fits(tokens, cache):
            return timed_step(self.hot, graph_key(tokens, mask),
                              lambda: compiled_drafter_forward(self, features, tokens, positions, cache, mask),
                              lambda: self.eager_forward(features, tokens, positions, cache, mask))
        return self.eager_forward(features, tokens, positions, cache, mask)

    def eager_forward(self, features, tokens, positions, cache, mask) -> torch.Tensor:
        x = self.fc(torch.cat([features, self.embed[tokens]], dim=-1))
        cos, sin = rope_tables(self.inv_freq, positions, x.dtype)
        past = 0 if cache is None else cache.length
        attn, is_causal = call_mask(mask, past, tokens.shape[1], True, tokens.device)
        return self.layer(x, cos, sin, 0, cache, attn, is_causal)

    def train_features(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Predicted features of t + 1 from the target's at t and x_{t+1} (teacher forcing), as
        one head's: [B, L, 1, H]."""
        B, L = tokens.shape
        nxt = torch.cat([tokens[:, 1:], tokens.new_zeros(B, 1)], dim=1)  # x_{t+1}; the last is masked out
        return self(hidden, nxt, torch.arange(L, device=tokens.device).expand(B, -1))[:, :, None]


CLASSES: dict[str, type[Heads]] = {c.kind: c for c in (Blockwise, Medusa, Hydra, Eagle)}


def make_heads(config: HeadsConfig, embed: torch.Tensor, proj: torch.Tensor) -> Heads:
    """A head module of ``config.kind`` on the given shared embedding and projection, in their dtype."""
    return CLASSES[config.kind](config, embed, proj).to(dtype=proj.dtype, device=proj.device)
