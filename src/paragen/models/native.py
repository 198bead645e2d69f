"""Native backend: a lean Llama-style decoder in plain PyTorch.

RMSNorm, rotary positions (the Hugging Face "rotate half" layout), a gated MLP (SwiGLU or
another activation of transformers' table), grouped-query attention, optional biases
(Qwen2's q/k/v, Llama's ``attention_bias`` and ``mlp_bias``), optional sliding-window
layers (Mistral, Qwen2). Parameter names follow the Hugging Face Llama layout, so the state
dict saves to and loads from ``model.safetensors`` unchanged.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paragen.cache import KVCache
from paragen.models.base import Model, ModelInfo, expand_mask, window_mask
from paragen.models.quant import WEIGHT_FORMATS, Linear, fp16_exact, make_linear


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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


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
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = cache.write(layer, k, v)  # all live slots [B, Hkv, S, D]
        # Grouped-query attention without materialising repeated key/value heads.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.kv != self.h)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.h * self.d))


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


def _pack_layer(block: Block, c: NativeConfig, weights: str | None) -> PackedLayer:
    a, m = block.self_attn, block.mlp
    return PackedLayer(
        norm1=block.input_layernorm.weight.detach(),
        qkv=_fuse([a.q_proj, a.k_proj, a.v_proj], weights),
        o=make_linear(a.o_proj.weight, a.o_proj.bias, weights or "native"),
        norm2=block.post_attention_layernorm.weight.detach(),
        gate_up=_fuse([m.gate_proj, m.up_proj], weights),
        down=make_linear(m.down_proj.weight, m.down_proj.bias, weights or "native"),
    )


class _SlotWriter:
    """The cache write of the compiled step: new keys/values into each row's slot indices
    [B, T] (a tensor, so the compiled graph does not depend on the rows' lengths); attention
    then reads every slot, under the step's mask."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], slots: torch.Tensor) -> None:
        self.k, self.v, self.slots = k, v, slots

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.slots[:, None, :, None].expand_as(k)
        self.k[layer].scatter_(2, idx, k)
        self.v[layer].scatter_(2, idx, v)
        return self.k[layer], self.v[layer]


# The compiled step's call sizes: a call of T tokens per row runs the graph of the next bucket
# up, padded (see ``NativeModel.compile_decode``).
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def token_bucket(t: int) -> int | None:
    """The compiled call size a call of ``t`` tokens per row runs as, or None above the largest."""
    return next((b for b in TOKEN_BUCKETS if b >= t), None)


def _own_code(fn: Callable, name: str) -> Callable:
    """``fn`` (a bound method) as a function of its own code object named ``name``: torch.compile
    keeps its graphs per code object, at most ``recompile_limit`` (8) each, so one code object
    per call-size bucket gives each bucket its own graphs without changing the process-wide limit."""
    f = fn.__func__
    code = f.__code__.replace(co_name=name, co_qualname=name)
    return types.MethodType(types.FunctionType(code, f.__globals__, name, f.__defaults__, f.__closure__), fn.__self__)


class NativeModel(nn.Module, Model):
    """Llama/Qwen2-style decoder implementing the paragen model contract."""

    def __init__(self, config: NativeConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        d = config.head_dim
        # Rotary frequencies in float32, as Hugging Face computes them (parity in every dtype).
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.windows = [config.window(i) for i in range(config.num_hidden_layers)]
        self.sliding = any(w is not None for w in self.windows)
        if self.sliding and config.attention != "causal":
            raise ValueError("sliding-window attention is implemented for causal models only")
        eos = () if config.eos_token_id is None else (config.eos_token_id,)
        self.info = ModelInfo(
            vocab_size=config.vocab_size,
            max_length=config.max_position_embeddings,
            eos_ids=eos,
            mask_id=config.mask_token_id,
            attention=config.attention,
            block_size=config.block_size,
            shift=config.shift,
        )
        self.tokenizer = None
        self.packed: Packed | None = None  # see pack()
        self.compiled: dict[int, Callable[..., tuple[torch.Tensor, torch.Tensor]]] | None = None  # compile_decode()

    def init_weights(self, seed: int = 0, std: float = 0.02) -> NativeModel:
        """GPT-2 style initialisation; residual projections scaled by 1/sqrt(2 * layers)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if name.endswith("norm.weight") else nn.init.zeros_(p)
                continue
            residual = name.endswith(("o_proj.weight", "down_proj.weight"))
            s = std / math.sqrt(2 * self.config.num_hidden_layers) if residual else std
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * s)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self, batch: int = 1, max_length: int | None = None) -> KVCache:
        c = self.config
        length = max_length or c.max_position_embeddings
        if self.compiled is not None:
            # The compiled step's shapes include the cache's: a few sizes (powers of two from 256)
            # compile once each, where every generation's own length would recompile; 64 more
            # slots hold a padded call's pads (``compiled_forward``).
            length = max(256, 1 << (length - 1).bit_length()) + TOKEN_BUCKETS[-1]
        return KVCache(
            c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, length, self.dtype, self.lm_head.weight.device,
        )

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq.float()  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, D]
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def attention_masks(self, tokens, positions, cache, mask) -> tuple[list[torch.Tensor | None], list[bool]]:
        """Per layer: the attention mask (None: all visible) and whether it is SDPA's built-in causal one."""
        past = 0 if cache is None else cache.length
        T = tokens.shape[1]
        causal = self.config.attention == "causal"
        # A causal mask over a fresh sequence is SDPA's built-in is_causal (no mask tensor).
        is_causal = mask is None and causal and past == 0 and T > 1
        attn_mask = None if is_causal else expand_mask(mask, past, T, causal, tokens.device)
        # Sliding-window layers see the same mask ANDed with their window (by position), built once
        # per call; a window wider than any query's reach (its position) hides nothing and is skipped,
        # which keeps SDPA's causal fast path for Mistral's 4096-token window on short sequences.
        reach = int(positions.max()) if self.sliding else 0
        windows = [w if w is not None and w <= reach else None for w in self.windows]
        windowed = {}
        if any(w is not None for w in windows):
            full = expand_mask(mask, past, T, causal, tokens.device) if is_causal else attn_mask
            windowed = {w: window_mask(full, positions, past, w) for w in set(windows) - {None}}
        masks = [attn_mask if w is None else windowed[w] for w in windows]
        return masks, [is_causal and w is None for w in windows]

    def hidden_states(self, tokens, positions, cache=None, mask=None) -> torch.Tensor:
        """Final-norm hidden states [B, T, H] (for prediction heads)."""
        masks, causal = self.attention_masks(tokens, positions, cache, mask)
        if self.packed is not None and not self.training:
            return self.packed_hidden_states(tokens, self.rope(positions), cache, masks, causal)
        cos, sin = self.rope(positions)
        x = self.model.embed_tokens(tokens)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, i, cache, masks[i], causal[i])
        return self.model.norm(x)

    # ------------------------------------------------------------ the packed inference path

    def pack(self, weights: str | None = None) -> NativeModel:
        """Switch inference to the packed path: q/k/v and gate/up each one matmul, one loop
        without module calls, fused RMSNorm and rotary ops; ``weights`` a format of
        ``paragen.models.quant`` (None: the model's own dtype, exact).

        The state dict and its Hugging Face names do not change. With ``weights=None`` the
        fused projections share storage with the named parameters (these become row views of
        them), so loading or editing weights in place still reaches the packed path, and a move
        or cast (``.to()``) packs again; a weight format is a snapshot: pack again after
        changing weights. ``train()`` unpacks.
        """
        if weights is not None and weights not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format '{weights}': choose one of {', '.join(WEIGHT_FORMATS)}")
        if weights is not None and self.dtype != torch.float32:
            raise ValueError(f"weight format '{weights}' runs float32 models: load the model in float32")
        self.packed = None
        with torch.no_grad():
            layers = [_pack_layer(block, self.config, weights) for block in self.model.layers]
            head = make_linear(self.lm_head.weight, None, weights or "native")
        exact = WEIGHT_FORMATS.get(weights, True)
        if weights == "fp16-weights":
            exact = all(fp16_exact(p) for name, p in self.named_parameters() if name.endswith("proj.weight"))
            exact = exact and fp16_exact(self.lm_head.weight)
        self.packed = Packed(layers, head, weights, exact, self.dtype)
        return self

    def unpack(self) -> NativeModel:
        """Back to the plain module-by-module path (the reference the packed path is tested against)."""
        self.packed = None
        return self

    @property
    def weight_format(self) -> str | None:
        """The packed weight format ('fp16-weights', 'int8-weights'), with ' (lossy)' where it
        changes what float32 computes; else the dtype's label (``Model.weight_format``)."""
        p = self.packed
        if p is None or p.weights is None:
            return super().weight_format
        return p.weights if p.exact else f"{p.weights} (lossy)"

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self.packed is not None:  # .to(), .double(), .cuda() replace the parameters: fuse them again
            self.pack(self.packed.weights)
        return self

    def train(self, mode: bool = True) -> NativeModel:
        if mode:
            self.packed = None  # training updates the named parameters, not a packed snapshot
        return super().train(mode)

    # ------------------------------------------------------------ the compiled decode step

    def compile_decode(self) -> NativeModel:
        """Opt in to a compiled decode step (gpt-fast's approach, with vLLM's padding to a few
        sizes): ``torch.compile`` of the packed forward with static shapes, attending over the
        whole preallocated cache under a mask, so that a call's graph depends on a few sizes only.

        - **Tokens per row** are padded up to the next of ``TOKEN_BUCKETS`` (1, 2, 4, ... 64): a
          call of 5 tokens runs the 8-token graph. A pad token sits after the row's real ones,
          writes its key/value into a slot past them (uncommitted: the next write overwrites it),
          sees only itself, is seen by no real token (the contract's masks hide every slot past a
          row's own tokens) and its logits are dropped: pads are inert.
        - **Rows** (the batch) are a dynamic size: one graph serves every batch of two rows or
          more (and one the single row, which torch specialises).
        - **Cache sizes** come in powers of two from 256 slots (``new_cache``), with 64 slots of
          room for pads.
        So a whole bench run compiles a bounded number of graphs: per bucket used and cache
        size, at most four (one row or several; the causal mask, built in the graph, or an
        explicit one: trees, ragged rows); each bucket is its own compiled function (``_own_code``), holding at
        most torch's 8 graphs. Calls after an empty cache (prefill) and longer calls stay eager;
        so do bidirectional and sliding-window models. Rows of different lengths write at their
        own slots (a scatter), in the same graph.
        """
        if self.packed is None:
            self.pack()
        if self.packed.weights is not None:
            # fbgemm's packed fp16 operand is opaque to the compiler: the graph breaks at every
            # matmul, and measured slower than the eager fp16-weights path.
            raise ValueError(f"compile=True runs the model's own dtype, not the weight format '{self.packed.weights}'")
        # On CUDA each graph is also captured as a CUDA graph (vLLM's and gpt-fast's way to skip
        # the per-kernel launch cost); torch replays it where its inputs allow, else runs it as is.
        mode = "reduce-overhead" if self.lm_head.weight.device.type == "cuda" else None
        self.compiled = {t: torch.compile(_own_code(self._static_forward, f"paragen_step_{t}"), dynamic=False, mode=mode)
                         for t in TOKEN_BUCKETS}
        return self

    def static_call(self, tokens: torch.Tensor, cache: KVCache) -> bool:
        """Whether this call runs the compiled step (see ``compile_decode``)."""
        return (self.config.attention == "causal" and not self.sliding and cache.length > 0
                and token_bucket(tokens.shape[1]) is not None
                and cache.length + token_bucket(tokens.shape[1]) <= cache.max_length)

    def compiled_forward(self, tokens, positions, cache: KVCache, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """The compiled step of a call of T tokens per row, padded to its bucket: writes each
        row's slots ``[rows[b], rows[b] + T)`` like ``KVCache.write``; (logits, hidden) [B, T, ...]."""
        B, T = tokens.shape
        n, dev = token_bucket(T), tokens.device
        slots = cache.slots(T)
        if n > T:  # pads after each row's tokens: positions and slots continue past them
            more = torch.arange(1, n - T + 1, device=dev)
            tokens = F.pad(tokens, (0, n - T))
            positions = torch.cat([positions, positions[:, -1:] + more], 1)
            slots = torch.cat([slots, slots[:, -1:] + more], 1)
        full = None  # causal: the graph builds it from the slots (a query sees its row's slots up to its own)
        if mask is not None:  # the contract mask over [length + T] keys, widened to every slot; a pad sees itself only
            past = cache.length
            visible = expand_mask(mask, past, T, True, dev)[:, 0]  # [B|1, T, past + T]
            full = torch.arange(cache.max_length, device=dev)[None, None, :] == slots[:, :, None]
            full[:, :T, : past + T] = visible
            full = full[:, None]
        if B > 1:  # one graph for every batch of two rows or more (torch specialises a single row)
            for x in (tokens, positions, slots, *([full] if full is not None else []), *cache.k, *cache.v):
                torch._dynamo.mark_dynamic(x, 0)
        logits, hidden = self.compiled[n](tokens, positions, slots, full, cache.k, cache.v)
        return logits[:, :T], hidden[:, :T]

    def _static_forward(self, tokens, positions, slots, mask, ks, vs) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None:  # causal: query t of row b sees the slots up to its own
            keys = torch.arange(ks[0].shape[2], device=tokens.device)
            mask = (keys[None, None, :] <= slots[:, :, None])[:, None]
        n = len(self.packed.layers)
        hidden = self.packed_hidden_states(tokens, self.rope(positions), _SlotWriter(ks, vs, slots), [mask] * n,
                                           [False] * n)
        return self.packed.lm_head(hidden), hidden

    def packed_hidden_states(self, tokens, rope, cache, masks, causal) -> torch.Tensor:
        """``hidden_states`` on the packed weights: the same computation in fewer ops (``rope``:
        the positions' ``self.rope``)."""
        p, c = self.packed, self.config
        if p.dtype != self.dtype:
            raise RuntimeError(f"the packed weights are {p.dtype} but the model is now {self.dtype}: call pack() again")
        B, T = tokens.shape
        h, kv, d, eps = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps
        cos, sin = rope
        # rotate_half(x) * sin == x.roll(d/2) * [-sin_lo, sin_hi] bit for bit (a negation is exact).
        sin = torch.cat((-sin[..., : d // 2], sin[..., d // 2 :]), dim=-1)
        act = ACTIVATIONS[c.hidden_act]
        x = self.model.embed_tokens(tokens)
        for i, layer in enumerate(p.layers):
            qkv = layer.qkv(rms_norm(x, layer.norm1, eps)).view(B, T, h + 2 * kv, d).transpose(1, 2)
            qk, v = qkv.split((h + kv, kv), dim=1)
            qk = qk * cos + qk.roll(d // 2, dims=-1) * sin  # rotary for queries and keys at once
            q, k = qk.split((h, kv), dim=1)
            if cache is not None:
                k, v = cache.write(i, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[i], is_causal=causal[i], enable_gqa=kv != h)
            x = x + layer.o(y.transpose(1, 2).reshape(B, T, h * d))
            gate, up = layer.gate_up(rms_norm(x, layer.norm2, eps)).chunk(2, dim=-1)
            x = x + layer.down(act(gate) * up)
        return rms_norm(x, self.model.norm.weight, eps)

    def forward(self, tokens, positions, cache=None, mask=None, return_hidden=False):
        if self.compiled is not None and not self.training and cache is not None and self.static_call(tokens, cache):
            logits, hidden = self.compiled_forward(tokens, positions, cache, mask)
            return (logits, hidden) if return_hidden else logits
        hidden = self.hidden_states(tokens, positions, cache, mask)
        packed = self.packed is not None and not self.training
        logits = self.packed.lm_head(hidden) if packed else self.lm_head(hidden)
        return (logits, hidden) if return_hidden else logits

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed_tokens.weight.detach(), self.lm_head.weight.detach()

    __call__ = nn.Module.__call__
