"""The speech encoder-decoder: conv subsampling + transformer encoder with a CTC head, an
autoregressive attention decoder with a position-addressed KV cache, and a non-autoregressive
decoder shared by mask-predict (token embeddings with masks) and CASS-NAT (token-level
acoustic embeddings).

Contract (``paragen.models.seq2seq``): ``encode(features, lengths) -> Encoded`` once per batch
of utterances (memory, its padding mask, per-frame CTC logits); ``bind(enc)`` is the AR
decoder as a decoder-only ``Model`` over those rows, which every LM chain strategy runs on
the shared driver; ``decode(tokens, positions, enc, cache=None, mask=None) -> logits`` is the
same call with the memory rows given; ``nar_tokens`` / ``nar_tae`` run the NAR decoder.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from paragen.cache import KVCache
from paragen.errors import ModelLoadError
from paragen.models.base import Model, ModelInfo, expand_mask
from paragen.models.seq2seq import MemoryCache, Seq2SeqModel
from paragen.speech import vocab
from paragen.speech.features import N_MELS


@dataclass(frozen=True)
class SpeechConfig:
    n_mels: int = N_MELS
    d_model: int = 128
    heads: int = 4
    ff: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 2  # AR attention decoder
    nar_layers: int = 2  # NAR decoder of CASS-NAT (and of mask-predict when there is no CMLM decoder)
    cmlm_layers: int = 0  # mask-predict's own CMLM decoder (0: none, mask-predict runs on the NAR decoder)
    conv_channels: int = 32
    vocab_size: int = len(vocab.VOCAB)
    dropout: float = 0.1
    max_tokens: int = 512  # longest decoder output (characters)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Encoded:
    """The encoder's output for a batch: memory [B, S, D], pad [B, S] (True = padding), ctc_logits [B, S, V]."""

    memory: torch.Tensor
    pad: torch.Tensor
    ctc_logits: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return (~self.pad).sum(1)

    def select(self, rows: list[int]) -> Encoded:
        """These rows, in this order (repeats allowed)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.memory.device)
        return Encoded(self.memory.index_select(0, idx), self.pad.index_select(0, idx), self.ctc_logits.index_select(0, idx))

    def extend(self, other: Encoded) -> Encoded:
        """These rows, then ``other``'s, padded to the longer memory (padding frames are masked)."""
        S = max(self.memory.shape[1], other.memory.shape[1])

        def widen(e: Encoded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            n = S - e.memory.shape[1]
            return (F.pad(e.memory, (0, 0, 0, n)), F.pad(e.pad, (0, n), value=True), F.pad(e.ctc_logits, (0, 0, 0, n)))

        return Encoded(*(torch.cat(pair) for pair in zip(widen(self), widen(other))))

    def log_probs(self, row: int) -> torch.Tensor:
        """Row ``row``'s CTC frame log-posteriors [S, V] (float32; its padding frames cut)."""
        return self.ctc_logits[row, : int(self.lengths[row])].float().log_softmax(-1)


def sinusoid(positions: torch.Tensor, d: int) -> torch.Tensor:
    """[..., d] sinusoidal position encodings (Vaswani et al. 2017, sec. 3.5)."""
    inv = torch.exp(torch.arange(0, d, 2, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / d))
    ang = positions.float().unsqueeze(-1) * inv
    return torch.stack([ang.sin(), ang.cos()], -1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h, self.q, self.k, self.v, self.o = heads, nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, D/H]
        return x.unflatten(-1, (self.h, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D] attends to keys/values [B, H, S, D/H] under mask [B or 1, 1, T, S] (True = may attend)."""
        y = F.scaled_dot_product_attention(self.split(self.q(x)), kv[0], kv[1], attn_mask=mask)
        return self.o(y.transpose(1, 2).flatten(-2))

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k(x)), self.split(self.v(x))


class EncoderLayer(nn.Module):
    def __init__(self, c: SpeechConfig) -> None:
        super().__init__()
        self.n1, self.att, self.n2 = nn.LayerNorm(c.d_model), Attention(c.d_model, c.heads), nn.LayerNorm(c.d_model)
        self.ff = nn.Sequential(nn.Linear(c.d_model, c.ff), nn.GELU(), nn.Linear(c.ff, c.d_model))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.n1(x)
        x = x + self.drop(self.att(h, self.att.kv(h), mask))
        return x + self.drop(self.ff(self.n2(x)))


class DecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to the encoder memory, feed-forward."""

    def __init__(self, c: SpeechConfig) -> None:
        super().__init__()
        d = c.d_model
        self.n1, self.self_att = nn.LayerNorm(d), Attention(d, c.heads)
        self.n2, self.cross = nn.LayerNorm(d), Attention(d, c.heads)
        self.n3, self.ff = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, c.ff), nn.GELU(), nn.Linear(c.ff, d))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, self_kv: tuple[torch.Tensor, torch.Tensor] | None, self_mask: torch.Tensor | None,
                memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        h = self.n1(x)
        x = x + self.drop(self.self_att(h, self_kv if self_kv is not None else self.self_att.kv(h), self_mask))
        x = x + self.drop(self.cross(self.n2(x), self.cross.kv(memory), memory_mask))
        return x + self.drop(self.ff(self.n3(x)))


class SpeechModel(nn.Module, Seq2SeqModel):
    tokenizer = vocab.TOKENIZER

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        c = self.config = config
        d = c.d_model
        # Two 3x3 stride-2 convolutions: 10 ms frames -> 40 ms (x4 subsampling, as ESPnet's Conv2dSubsampling).
        ch = c.conv_channels
        self.conv = nn.Sequential(nn.Conv2d(1, ch, 3, 2), nn.ReLU(), nn.Conv2d(ch, ch, 3, 2), nn.ReLU())
        freq = ((c.n_mels - 1) // 2 - 1) // 2
        self.proj = nn.Linear(c.conv_channels * freq, d)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.enc_norm, self.ctc_head = nn.LayerNorm(d), nn.Linear(d, c.vocab_size)
        self.embed = nn.Embedding(c.vocab_size, d)
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.dec_norm, self.head = nn.LayerNorm(d), nn.Linear(d, c.vocab_size)
        # NAR decoder: its own embeddings (mask-predict), a one-layer TAE extractor (CASS-NAT), layers and head
        self.nar_embed = nn.Embedding(c.vocab_size, d)
        self.tae = Attention(d, c.heads)
        self.nar = nn.ModuleList(DecoderLayer(c) for _ in range(c.nar_layers))
        self.nar_norm, self.nar_head = nn.LayerNorm(d), nn.Linear(d, c.vocab_size)
        # CMLM decoder (cmlm_layers > 0): a character's input is its embedding (or the mask's)
        # plus its TAE, so a masked position knows which frames it spells (see cmlm_logits)
        if c.cmlm_layers:
            self.cmlm_embed = nn.Embedding(c.vocab_size, d)
            self.cmlm = nn.ModuleList(DecoderLayer(c) for _ in range(c.cmlm_layers))
            self.cmlm_norm, self.cmlm_head = nn.LayerNorm(d), nn.Linear(d, c.vocab_size)
        # Global feature mean and std of the training set (CMVN), set once before training.
        self.register_buffer("feat_mean", torch.zeros(c.n_mels))
        self.register_buffer("feat_std", torch.ones(c.n_mels))
        self.drop = nn.Dropout(c.dropout)
        # The decoder's side of the contract: characters, EOS both starts and ends a sequence.
        self.info = ModelInfo(vocab_size=c.vocab_size, max_length=c.max_tokens, eos_ids=(vocab.EOS,),
                              mask_id=vocab.MASK, attention="encoder-decoder")

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def bind(self, enc: Encoded) -> SpeechDecoder:
        return SpeechDecoder(self, enc)

    # ------------------------------------------------------------------ encoder
    @staticmethod
    def subsampled(lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames for ``lengths`` feature frames (two unpadded 3x3 stride-2 convolutions)."""
        return ((lengths - 1) // 2 - 1) // 2

    def encode(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> Encoded:
        """features [B, T, 80] (padded), lengths [B] -> Encoded with S = subsampled(T) frames."""
        B, T, _ = features.shape
        if lengths is None:
            lengths = torch.full((B,), T)
        x = ((features.to(self.dtype) - self.feat_mean) / self.feat_std).unsqueeze(1)  # [B, 1, T, F]
        x = self.conv(x)  # [B, C, S, F']
        x = self.proj(x.permute(0, 2, 1, 3).flatten(2))  # [B, S, D]
        S = x.shape[1]
        pad = torch.arange(S, device=x.device)[None] >= self.subsampled(lengths.to(x.device))[:, None]
        x = self.drop(x * math.sqrt(self.config.d_model) + sinusoid(torch.arange(S, device=x.device), x.shape[-1]).to(x.dtype))
        mask = (~pad)[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, mask)
        memory = self.enc_norm(x)
        return Encoded(memory, pad, self.ctc_head(memory))

    # ------------------------------------------------------------------ AR decoder
    def new_cache(self, batch: int, max_length: int) -> KVCache:
        c = self.config
        return KVCache(c.decoder_layers, batch, c.heads, c.d_model // c.heads, max_length, self.dtype, self.device)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, enc: Encoded, cache: KVCache | None = None,
               mask: torch.Tensor | None = None, return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """AR decoder logits [B, T, V] for tokens [B, T] at positions [B, T] (causal).

        With a cache the T new keys/values are written after the cache's committed slots and
        attend to all of them; the caller commits (the cache never advances itself). ``mask``:
        the model contract's (``paragen.models.base``), for rows of different lengths; None:
        causal over the committed slots.
        """
        d = self.config.d_model
        x = self.drop(self.embed(tokens) * math.sqrt(d) + sinusoid(positions, d).to(self.dtype))
        start = cache.length if cache is not None else 0
        T = tokens.shape[1]
        if mask is None:
            causal = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(start)[None, None]
        else:
            causal = expand_mask(mask, start, T, True, x.device)
        mem_mask = (~enc.pad)[:, None, None, :]
        for i, layer in enumerate(self.decoder):
            kv = cache.write(i, *layer.self_att.kv(layer.n1(x))) if cache is not None else None
            x = layer(x, kv, causal, enc.memory, mem_mask)
        h = self.dec_norm(x)
        return (self.head(h), h) if return_hidden else self.head(h)

    # ------------------------------------------------------------------ NAR decoder
    def token_acoustic_embeddings(self, enc: Encoded, segments: torch.Tensor) -> torch.Tensor:
        """CASS-NAT's token-level acoustic embeddings (TAE) [B, L, D].

        segments [B, L, S] bool: the encoder frames the CTC alignment gives each token. Token i's
        query (its position encoding) attends only to its own frames (Fan et al. 2021, sec. 2.2).
        A token without frames (padding) attends to all frames instead of none (no NaN).
        """
        B, L, S = segments.shape
        q = sinusoid(torch.arange(L, device=segments.device), self.config.d_model).to(self.dtype).expand(B, -1, -1)
        empty = ~segments.any(-1, keepdim=True)
        mask = (segments | (empty & ~enc.pad[:, None, :]))[:, None]
        return self.tae(q, self.tae.kv(enc.memory), mask)

    def nar_forward(self, inputs: torch.Tensor, enc: Encoded, pad: torch.Tensor) -> torch.Tensor:
        """NAR decoder logits [B, L, V]: inputs [B, L, D] (token embeddings or TAEs), pad [B, L] True = padding;
        bidirectional self-attention over the non-padded positions."""
        return self._bidirectional(self.nar, self.nar_norm, self.nar_head, inputs, enc, pad)

    def _bidirectional(self, layers: nn.ModuleList, norm: nn.Module, head: nn.Module, inputs: torch.Tensor, enc: Encoded,
                       pad: torch.Tensor) -> torch.Tensor:
        L = inputs.shape[1]
        x = self.drop(inputs + sinusoid(torch.arange(L, device=inputs.device), self.config.d_model).to(self.dtype))
        self_mask = (~pad)[:, None, None, :]
        mem_mask = (~enc.pad)[:, None, None, :]
        for layer in layers:
            x = layer(x, None, self_mask, enc.memory, mem_mask)
        return head(norm(x))

    def nar_tokens(self, tokens: torch.Tensor, enc: Encoded, pad: torch.Tensor) -> torch.Tensor:
        """Mask-predict: NAR logits for tokens [B, L] with ``vocab.MASK`` where unknown."""
        return self.nar_forward(self.nar_embed(tokens) * math.sqrt(self.config.d_model), enc, pad)

    def nar_tae(self, segments: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """CASS-NAT: NAR logits [B, L, V] from the TAEs of the alignment's segments [B, L, S]."""
        return self.nar_forward(self.token_acoustic_embeddings(enc, segments), enc, ~segments.any(-1))

    def cmlm_logits(self, tokens: torch.Tensor, segments: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """The CMLM decoder's logits [B, L, V] for tokens [B, L] (``vocab.MASK`` where unknown)
        whose frames are segments [B, L, S] (a CTC alignment's, ``align.segments``; padding
        tokens have none). Each input is the token's embedding plus its TAE: a conditional
        masked LM over characters that knows where each character is spoken, so that with every
        position masked it predicts as CASS-NAT does, and with some known it refines the rest."""
        if not self.config.cmlm_layers:
            raise ValueError("this speech model has no CMLM decoder (cmlm_layers = 0)")
        x = self.cmlm_embed(tokens) * math.sqrt(self.config.d_model) + self.token_acoustic_embeddings(enc, segments)
        return self._bidirectional(self.cmlm, self.cmlm_norm, self.cmlm_head, x, enc, ~segments.any(-1))

    def add_cmlm(self, layers: int) -> SpeechModel:
        """This model with a CMLM decoder of ``layers`` layers added (for training from a model
        without one), started from the NAR decoder's weights (both read TAEs and characters)
        where the layer counts allow, else freshly initialised."""
        grown = SpeechModel(replace(self.config, cmlm_layers=layers)).to(self.dtype)
        missing, unexpected = grown.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("cmlm") for k in missing), (missing, unexpected)
        with torch.no_grad():
            grown.cmlm_embed.weight.copy_(self.nar_embed.weight)
            grown.cmlm_norm.load_state_dict(self.nar_norm.state_dict())
            grown.cmlm_head.load_state_dict(self.nar_head.state_dict())
            for new, old in zip(grown.cmlm, self.nar):
                new.load_state_dict(old.state_dict())
        return grown.train(self.training)


class SpeechDecoder(Model):
    """The AR decoder of ``model`` over the rows of ``enc``: the decoder-only contract. Its
    caches carry their rows' memories (``MemoryCache``); a call without a cache reads ``enc``."""

    def __init__(self, model: SpeechModel, enc: Encoded) -> None:
        self.speech, self.memory = model, enc
        self.info, self.tokenizer, self.name = model.info, model.tokenizer, getattr(model, "name", "speech")

    @property
    def device(self) -> torch.device:
        return self.speech.device

    @property
    def dtype(self) -> torch.dtype:
        return self.speech.dtype

    def new_cache(self, batch: int = 1, max_length: int | None = None) -> MemoryCache:
        if batch != self.memory.memory.shape[0]:
            raise ValueError(f"a cache of {batch} rows for a decoder over {self.memory.memory.shape[0]} utterances")
        c = self.speech.config
        return MemoryCache(self.memory, c.decoder_layers, batch, c.heads, c.d_model // c.heads,
                           max_length or self.info.max_length, self.dtype, self.device)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: MemoryCache | None = None,
                mask: torch.Tensor | None = None, return_hidden: bool = False):
        enc = cache.memory if cache is not None else self.memory
        return self.speech.decode(tokens, positions, enc, cache, mask, return_hidden)


# ---------------------------------------------------------------------- save / load

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def save_speech_model(model: SpeechModel, out: Path, extra_files: dict[str, str] | None = None,
                      dtype: torch.dtype = torch.float16) -> None:
    """Write config.json (``paragen_kind: speech``) and fp16 safetensors into ``out`` (an existing directory)."""
    from safetensors.torch import save_file

    (out / CONFIG_NAME).write_text(json.dumps({"paragen_kind": "speech", "paragen_attention": "encoder-decoder",
                                               "vocab": list(vocab.VOCAB), **model.config.to_dict()}, indent=2) + "\n")
    save_file({k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()},
              str(out / WEIGHTS_NAME))
    for name, text in (extra_files or {}).items():
        (out / name).write_text(text)


def is_speech_model(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_NAME).read_text()).get("paragen_kind") == "speech"
    except (OSError, json.JSONDecodeError):
        return False


def load_speech_model(path: Path, dtype: torch.dtype = torch.float32) -> SpeechModel:
    """A model written by ``save_speech_model``, in eval mode, cast to ``dtype``."""
    from safetensors.torch import load_file

    try:
        raw = json.loads((path / CONFIG_NAME).read_text())
        if raw.pop("vocab", None) != list(vocab.VOCAB):
            raise ModelLoadError(f"{path}: the model's character vocabulary differs from this paragen's")
        raw = {k: v for k, v in raw.items() if not k.startswith("paragen_")}
        model = SpeechModel(SpeechConfig(**raw))
        state = load_file(str(path / WEIGHTS_NAME))
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable speech model ({e}); re-save it with `paragen train speech`") from e
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(dtype).eval()
