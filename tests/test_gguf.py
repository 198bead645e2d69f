"""GGUF export: tensors, names and tokenizer metadata read back with gguf's own reader; the rope
row pairing checked by the attention scores it gives; llama.cpp itself only where it is installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import paragen
from paragen.errors import InvalidInputError
from paragen.models.gguf import gguf_name, rope_pairs, write_gguf
from tests.helpers import tiny_model

gguf = pytest.importorskip("gguf")
needs_llamacpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")


def rotate_half_rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    d = x.shape[-1]
    f = pos[:, None] * base ** (-torch.arange(0, d, 2, dtype=x.dtype) / d)
    cos, sin = torch.cat([f, f], -1).cos(), torch.cat([f, f], -1).sin()
    a, b = x.chunk(2, -1)
    return x * cos + torch.cat([-b, a], -1) * sin


def pairwise_rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """llama.cpp's rope "norm": dimensions 2i and 2i + 1 rotate together by angle pos * base^(-2i/d)."""
    d = x.shape[-1]
    f = pos[:, None] * base ** (-torch.arange(0, d, 2, dtype=x.dtype) / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack([even * f.cos() - odd * f.sin(), even * f.sin() + odd * f.cos()], -1)
    return out.flatten(-2)


def test_rope_pairs_make_pairwise_rope_give_the_same_attention_scores():
    g = torch.Generator().manual_seed(0)
    heads, d, hidden = 3, 8, 12
    wq, wk = torch.randn(heads * d, hidden, generator=g, dtype=torch.float64), torch.randn(heads * d, hidden, generator=g,
                                                                                          dtype=torch.float64)
    x, pos = torch.randn(5, hidden, generator=g, dtype=torch.float64), torch.arange(5, dtype=torch.float64)

    def scores(wq, wk, rope):
        q = rope((x @ wq.T).view(5, heads, d).transpose(0, 1), pos)
        k = rope((x @ wk.T).view(5, heads, d).transpose(0, 1), pos)
        return q @ k.transpose(1, 2)

    want = scores(wq, wk, rotate_half_rope)
    torch.testing.assert_close(scores(rope_pairs(wq, heads), rope_pairs(wk, heads), pairwise_rope), want)
    assert not torch.allclose(scores(wq, wk, pairwise_rope), want)  # without the pairing they differ


def fields(reader) -> dict:
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}


@pytest.mark.parametrize("weights", ["f32", "f16", "q8_0"])
def test_gguf_holds_every_tensor_and_the_tokenizer(model_dir, tmp_path, weights):
    model = paragen.load(model_dir)
    path = write_gguf(model, tmp_path / "m.gguf", weights)
    reader = gguf.GGUFReader(str(path))
    meta = fields(reader)
    c = model.config
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == c.num_hidden_layers and meta["llama.embedding_length"] == c.hidden_size
    assert meta["llama.attention.head_count_kv"] == c.num_key_value_heads
    assert meta["llama.rope.dimension_count"] == c.head_dim
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.ggml.eos_token_id"] == model.tokenizer.eos_id
    vocab = model.tokenizer.backend.get_vocab(with_added_tokens=True)
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == c.vocab_size and all(tokens[i] == text for text, i in vocab.items())
    types = meta["tokenizer.ggml.token_type"]
    assert types[model.tokenizer.eos_id] == gguf.TokenType.CONTROL and types[vocab["a"]] == gguf.TokenType.NORMAL
    assert len(meta["tokenizer.ggml.merges"]) > 0

    tensors = {t.name: t for t in reader.tensors}
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: token_embd serves
    assert set(tensors) == {gguf_name(k) for k in state}
    for name, value in state.items():
        t = tensors[gguf_name(name)]
        if name.endswith("q_proj.weight"):
            value = rope_pairs(value, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            value = rope_pairs(value, c.num_key_value_heads)
        if value.dim() == 1 or weights == "f32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(value.shape), value.numpy())
        elif weights == "f16":
            assert t.tensor_type == gguf.GGMLQuantizationType.F16
            np.testing.assert_array_equal(np.asarray(t.data).reshape(value.shape), value.half().numpy())
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            back = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(value.shape)
            np.testing.assert_allclose(back, value.numpy(), atol=float(value.abs().max()) / 127)


def test_gguf_export_refuses_what_llama_cpp_llama_does_not_compute(tmp_path):
    biased = tiny_model(bias=True)
    with pytest.raises(InvalidInputError, match="biases"):
        write_gguf(biased, tmp_path / "m.gguf")
    with pytest.raises(InvalidInputError, match="tokenizer"):
        write_gguf(tiny_model(), tmp_path / "m.gguf")
    with pytest.raises(InvalidInputError, match="unknown GGUF weight type"):
        write_gguf(tiny_model(), tmp_path / "m.gguf", "q4_k")


@needs_llamacpp
@pytest.mark.parametrize("name,peer", [("tiny", "llamacpp"),  # the built-in model's loads are slow; f16: exact for fp16 weights
                                       pytest.param("code-target", "llamacpp", marks=pytest.mark.slow),
                                       pytest.param("code-target", "llamacpp-f16", marks=pytest.mark.slow)])
def test_llama_cpp_tokenizes_and_decodes_like_paragen(model_dir, name, peer):
    from paragen.bench.peers import PEERS, load_llamacpp, run_llamacpp

    model = paragen.load(model_dir if name == "tiny" else name)
    llm = load_llamacpp(PEERS[peer], model, threads=1, n_ctx=256)
    texts = ["def add(a, b):\n    return a + b\n", "class Point:\n  x = 1  # it's 10 o'clock\n\n\n\tpass", "  élan 123 ??"]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == model.tokenizer.encode(text), text
    for text in texts:
        ids = model.tokenizer.encode(text)
        want = paragen.generate(model, ids, max_new_tokens=40).tokens
        assert list(run_llamacpp(llm, ids, 40, model.info.eos_ids).tokens) == want, text


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama-cpp-python is installed")
def test_llama_cpp_peers_without_llama_cpp_python(model_dir):
    from paragen.bench.peers import LlamaCpp, load_llamacpp
    from paragen.bench.run import BenchConfig, build_contenders

    names = {c.name for c in build_contenders(BenchConfig(strategies=("all",)))}
    assert "hf-greedy" in names and not any(n.startswith("llamacpp") for n in names)
    with pytest.raises(InvalidInputError, match=r"pip install 'paragen\[llamacpp\]'"):
        load_llamacpp(LlamaCpp, paragen.load(model_dir), threads=1, n_ctx=64)
