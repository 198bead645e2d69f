"""``NativeModel``: the model contract (``paragen.models.base``) over the native forwards. It
owns the weights (the reference modules, Hugging Face names), the rotary frequencies, the
attention masks of a call and the cache, and sends each call down one of three forwards:

- ``reference.py``: module by module; loading, training and the float64 oracle;
- ``packed.py``: fused weights in fewer ops, for inference (``pack``);
- ``compiled.py``: the packed path compiled with static shapes (``compile_decode``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from paragen.cache import KVCache
from paragen.models.base import Model, ModelInfo, expand_mask, window_mask
from paragen.models.native.compiled import (
    HotGraphs,
    cache_length,
    compile_steps,
    compiled_forward,
    dummy_call,
    graph_key,
    runs_compiled,
    timed_step,
    warm_up,
)
from paragen.models.native.config import NativeConfig
from paragen.models.native.layers import call_mask, inv_frequencies, rope_tables
from paragen.models.native.packed import Packed, pack_weights, packed_hidden_states
from paragen.models.native.reference import Decoder
from paragen.models.quant import WEIGHT_FORMATS


class NativeModel(nn.Module, Model):
    """Llama/Qwen2-style decoder implementing the paragen model contract."""

    def __init__(self, config: NativeConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", inv_frequencies(config.head_dim, config.rope_theta), persistent=False)
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
        self.hot: HotGraphs | None = None  # compile_decode(auto=True): which graphs have earned their compile

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
        if self.compiled is not None:  # the compiled step's shapes include the cache's
            length = cache_length(length)
        return KVCache(
            c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, length, self.dtype, self.lm_head.weight.device,
        )

    def attention_masks(self, tokens, positions, cache, mask) -> tuple[list[torch.Tensor | None], list[bool]]:
        """Per layer: the attention mask (None: all visible) and whether it is SDPA's built-in causal one."""
        past = 0 if cache is None else cache.length
        T = tokens.shape[1]
        causal = self.config.attention == "causal"
        attn_mask, is_causal = call_mask(mask, past, T, causal, tokens.device)
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
        """Final-norm hidden states [B, T, H] (for prediction heads), on the packed path if packed."""
        masks, causal = self.attention_masks(tokens, positions, cache, mask)
        cos, sin = rope_tables(self.inv_freq, positions, self.dtype)
        if self.runs_packed():
            return packed_hidden_states(self.packed, self.config, self.model, tokens, cos, sin, cache, masks, causal)
        return self.model(tokens, cos, sin, cache, masks, causal)

    def forward(self, tokens, positions, cache=None, mask=None, return_hidden=False):
        if self.compiled is not None and cache is not None and self.runs_packed() and runs_compiled(self, tokens, cache):
            logits, hidden = self.decode_step(tokens, positions, cache, mask)
        else:
            logits, hidden = self.eager_forward(tokens, positions, cache, mask)
        return (logits, hidden) if return_hidden else logits

    def eager_forward(self, tokens, positions, cache, mask) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_states(tokens, positions, cache, mask)
        return (self.packed.lm_head(hidden) if self.runs_packed() else self.lm_head(hidden)), hidden

    def decode_step(self, tokens, positions, cache, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """A call the compiled step can run (``compiled.timed_step``)."""
        return timed_step(self.hot, graph_key(tokens, mask), lambda: compiled_forward(self, tokens, positions, cache, mask),
                          lambda: self.eager_forward(tokens, positions, cache, mask))

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed_tokens.weight.detach(), self.lm_head.weight.detach()

    __call__ = nn.Module.__call__

    # ------------------------------------------------------------ the packed inference path

    def pack(self, weights: str | None = None) -> NativeModel:
        """Switch inference to the packed path (``packed.py``): q/k/v and gate/up each one matmul,
        one loop without module calls, fused RMSNorm and rotary ops; ``weights`` a format of
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
        self.packed = pack_weights(self.model, self.lm_head, weights)
        return self

    def unpack(self) -> NativeModel:
        """Back to the plain module-by-module path (the reference the packed path is tested against)."""
        self.packed = None
        return self

    def runs_packed(self) -> bool:
        """Whether calls run the packed path (packed, and not training)."""
        if self.packed is None or self.training:
            return False
        if self.packed.dtype != self.dtype:
            raise RuntimeError(f"the packed weights are {self.packed.dtype} but the model is now {self.dtype}: "
                               "call pack() again")
        return True

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

    def compile_decode(self, auto: bool = False) -> NativeModel:
        """Opt in to a compiled decode step (``compiled.py``: the packed forward compiled with
        static shapes, calls padded to a few sizes). Calls after an empty cache (prefill) and
        longer calls stay eager; so do bidirectional and sliding-window models. ``auto``: a
        graph is compiled only once its calls have run long enough eagerly to repay the compile
        (``HotGraphs``); ``warm_up`` compiles ahead."""
        if self.packed is None:
            self.pack()
        if self.packed.weights is not None:
            # fbgemm's packed fp16 operand is opaque to the compiler: the graph breaks at every
            # matmul, and measured slower than the eager fp16-weights path.
            raise ValueError(f"compile=True runs the model's own dtype, not the weight format '{self.packed.weights}'")
        self.compiled = compile_steps(self)
        self.hot = HotGraphs.on(auto, self.lm_head.weight.device)
        return self

    def warm_up(self, tokens: int, rows: int = 1) -> int:
        """Compile now the graphs a decode of up to ``tokens`` per call on ``rows`` rows runs
        (``compiled.warm_up``); 0 when the step is not compiled. Returns the calls run."""
        def call(batch: int, n: int, masked: bool) -> None:
            cache = self.new_cache(batch=batch, max_length=1)
            ids, positions, mask = dummy_call(cache, n, masked)
            self(ids, positions, cache=cache, mask=mask)

        return 0 if self.compiled is None else warm_up(tokens, rows, call, self.hot)
