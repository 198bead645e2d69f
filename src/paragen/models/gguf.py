"""Write a native model as GGUF, the file format of llama.cpp (optional: ``pip install paragen[llamacpp]``).

The model is written as llama.cpp's ``llama`` architecture with tensor names of its own
(``blk.N.attn_q.weight``, ...). Two facts about llama.cpp's reading of Llama models decide
the layout (both are what llama.cpp's own ``convert_hf_to_gguf.py`` does for Llama):

- llama.cpp rotates adjacent pairs of a head's dimensions (rope "norm"), Hugging Face rotates
  the two halves (``rotate_half``); the q and k projection rows of each head are therefore
  reordered so that half i and half i + D/2 become neighbours 2i, 2i + 1. Attention scores are
  unchanged (q and k are permuted alike).
- The tokenizer is declared as ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE: the token
  strings and merges of tokenizer.json, in the GPT-2 byte-to-unicode alphabet) with
  ``tokenizer.ggml.pre = "gpt-2"``, llama.cpp's name for GPT-2's pre-tokenizer regex, which is
  the one paragen's ``ByteLevel(use_regex=True)`` pre-tokenizer applies; no BOS is added, as
  paragen adds none. Special tokens (EOS, mask) are CONTROL tokens.

Only what llama.cpp's ``llama`` architecture computes is written: models with biases, sliding
windows, non-causal attention or an activation other than SiLU are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from paragen.errors import InvalidInputError
from paragen.models.native import NativeModel

# GGUF weight types paragen writes: name -> (gguf.GGMLQuantizationType name, gguf.LlamaFileType name)
GGUF_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(name: str) -> str:
    """The GGUF tensor name of a Hugging Face Llama parameter name."""
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if name in top:
        return top[name]
    _, _, layer, rest = name.split(".", 3)  # model.layers.N.rest
    return f"blk.{layer}.{_LAYER_NAMES[rest]}"


def rope_pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's output rows from halves (rotate_half) to adjacent pairs (llama.cpp's rope)."""
    rows, cols = weight.shape
    d = rows // heads
    return weight.reshape(heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


def _check_exportable(model: NativeModel) -> None:
    c = model.config
    problems = [what for what, bad in (
        ("biases", c.attention_bias or c.attention_out_bias or c.mlp_bias),
        ("sliding-window attention", c.sliding_window is not None),
        (f"{c.attention} attention", c.attention != "causal"),
        (f"hidden_act '{c.hidden_act}'", c.hidden_act not in ("silu", "swish")),
    ) if bad]
    if problems:
        raise InvalidInputError(f"GGUF export writes llama.cpp's llama architecture, which has no {', '.join(problems)}")
    if model.tokenizer is None:
        raise InvalidInputError("GGUF export needs the model's tokenizer: load the model with paragen.load")


def _tokenizer_tables(model: NativeModel) -> tuple[list[str], list[int], list[str]]:
    """(token strings by id, token types, merges "a b") of a byte-level BPE tokenizer.json."""
    import gguf

    tok = model.tokenizer
    if not tok._fast:
        raise InvalidInputError("GGUF export reads byte-level BPE tokenizers (tokenizer.json) only")
    spec = json.loads(tok.backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if spec["model"]["type"] != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise InvalidInputError("GGUF export declares GPT-2's byte-level BPE: this tokenizer is another kind")
    vocab = tok.backend.get_vocab(with_added_tokens=True)
    n = model.info.vocab_size
    tokens = [f"[PAD{i}]" for i in range(n)]  # ids the tokenizer leaves unused (vocab padded to the model)
    types = [int(gguf.TokenType.UNUSED)] * n
    for text, i in vocab.items():
        tokens[i], types[i] = text, int(gguf.TokenType.NORMAL)
    for added in spec.get("added_tokens", []):
        if added.get("special"):
            types[added["id"]] = int(gguf.TokenType.CONTROL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tokens, types, merges


def write_gguf(model: NativeModel, path: str | os.PathLike, weights: str = "f32") -> Path:
    """Write ``model`` (a float32/float16 native Llama-style model with its tokenizer) to a GGUF file.

    ``weights``: a key of ``GGUF_TYPES`` for the 2-D weights (norms stay float32, as llama.cpp reads them).
    """
    try:
        import gguf
    except ImportError as e:
        raise InvalidInputError("GGUF export needs the gguf package: pip install 'paragen[llamacpp]'") from e
    if weights not in GGUF_TYPES:
        raise InvalidInputError(f"unknown GGUF weight type '{weights}': choose one of {', '.join(GGUF_TYPES)}")
    _check_exportable(model)
    c = model.config
    qtype, ftype = (getattr(gguf.GGMLQuantizationType, GGUF_TYPES[weights][0]),
                    getattr(gguf.LlamaFileType, GGUF_TYPES[weights][1]))
    tokens, types, merges = _tokenizer_tables(model)
    path = Path(path)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(getattr(model, "name", "paragen"))
    w.add_file_type(int(ftype))
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_add_bos_token(False)
    eos = model.info.eos_ids
    if eos:
        w.add_eos_token_id(eos[0])
        w.add_bos_token_id(eos[0])  # the built-in tokenizers have no BOS of their own; never added
    state = model.state_dict()
    if c.tie_word_embeddings:
        state.pop("lm_head.weight")  # llama.cpp reuses token_embd when output.weight is absent
    for name, t in state.items():
        t = t.detach().float()
        if name.endswith("q_proj.weight"):
            t = rope_pairs(t, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            t = rope_pairs(t, c.num_key_value_heads)
        data = t.numpy()
        if data.ndim == 1 or weights == "f32":
            w.add_tensor(gguf_name(name), data.astype(np.float32))
        elif weights == "f16":
            w.add_tensor(gguf_name(name), data.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
