"""Backends: native vs transformers logits on the same weights; save/load; clear load errors."""

from __future__ import annotations

import json

import pytest
import torch

import paragen
from paragen.errors import ModelLoadError
from paragen.models.io import load_native, save_model
from tests.helpers import tiny_model


def logits(model, ids, mask=None):
    with torch.inference_mode():
        return model(torch.tensor([ids]), torch.arange(len(ids))[None], mask=mask)[0]


@pytest.mark.parametrize("bias", [False, True], ids=["llama", "qwen2"])
def test_native_matches_transformers(tmp_path, tokenizer, bias):
    """Same weights, float64: paragen's Llama/Qwen2 against transformers' own classes."""
    from transformers import AutoModelForCausalLM

    model = tiny_model(5, vocab=tokenizer.vocab_size, bias=bias)
    path = save_model(model, tokenizer, tmp_path / "m", dtype=torch.float64)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == ("qwen2" if bias else "llama")
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float64, local_files_only=True).eval()
    ids = tokenizer.encode("def add(a, b):\n    return a + b\n")
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(logits(model, ids), ref, rtol=1e-10, atol=1e-10)
    # and through the loaders of both backends
    native = paragen.load(path, dtype=torch.float64)
    adapter = paragen.load(path, backend="hf", dtype=torch.float64)
    torch.testing.assert_close(logits(native, ids), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits(adapter, ids), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bias", [False, True], ids=["llama-tied", "qwen2-untied"])
def test_hidden_states_come_with_the_logits_and_agree_across_backends(tmp_path, tokenizer, bias):
    """return_hidden: the final-norm hidden states from the same call, equal on both backends
    (float64), read out by head_weights()'s projection into the very logits returned, with a
    cache and a tree mask too."""
    model = tiny_model(6, vocab=tokenizer.vocab_size, bias=bias)
    path = save_model(model, tokenizer, tmp_path / "m", dtype=torch.float64)
    ids = tokenizer.encode("def add(a, b):\n    return a + b\n")
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    mask[2, 1] = False  # a tree: node 2 is node 1's sibling
    got = {}
    for backend in ("native", "hf"):
        m = paragen.load(path, backend=backend, dtype=torch.float64)
        with torch.inference_mode():
            plain = m(torch.tensor([ids]), torch.arange(len(ids))[None])
            out, hidden = m(torch.tensor([ids]), torch.arange(len(ids))[None], return_hidden=True)
            cache = m.new_cache(max_length=64)
            m(torch.tensor([ids[:5]]), torch.arange(5)[None], cache=cache)
            cache.commit(5)
            tree_out, tree_hidden = m(torch.tensor([ids[5:9]]), torch.tensor([[5, 6, 6, 7]]), cache=cache,
                                      mask=mask[None], return_hidden=True)
        embed, proj = m.head_weights()
        assert hidden.shape == (1, len(ids), 32) and embed.shape == proj.shape == (tokenizer.vocab_size, 32)
        assert torch.equal(out, plain)
        torch.testing.assert_close(hidden @ proj.T, out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tree_hidden @ proj.T, tree_out, rtol=1e-12, atol=1e-12)
        got[backend] = (hidden, tree_hidden, embed, proj)
    for a, b in zip(got["native"], got["hf"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_native_loads_directories_written_by_transformers(tmp_path, tokenizer, kind):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    Config, Model = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    torch.manual_seed(0)
    cfg = Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                 eos_token_id=tokenizer.eos_id, tie_word_embeddings=(kind == "llama"))
    hf = Model(cfg).to(torch.float64).eval()
    hf.save_pretrained(str(tmp_path))
    tokenizer.save(tmp_path)
    ids = tokenizer.encode("for i in range(10):")
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]
    native = paragen.load(tmp_path, dtype=torch.float64)
    torch.testing.assert_close(logits(native, ids), ref, rtol=1e-9, atol=1e-9)
    assert native.info.eos_ids == (tokenizer.eos_id,)


def test_hf_adapter_honours_explicit_masks(tmp_path, tokenizer):
    """A tree-style mask: each token sees only the first token and itself."""
    model = tiny_model(6, vocab=tokenizer.vocab_size)
    path = save_model(model, tokenizer, tmp_path / "m", dtype=torch.float64)
    adapter = paragen.load(path, backend="hf", dtype=torch.float64)
    mask = torch.eye(5, dtype=torch.bool)
    mask[:, 0] = True
    ids = [5, 9, 12, 7, 30]
    torch.testing.assert_close(logits(adapter, ids, mask[None]), logits(model, ids, mask[None]), rtol=1e-10, atol=1e-10)


def test_save_load_gives_identical_logits(tmp_path, tokenizer):
    model = tiny_model(2, vocab=tokenizer.vocab_size).float()
    save_model(model, tokenizer, tmp_path / "m", dtype=torch.float32)
    loaded = load_native(tmp_path / "m")
    ids = [1, 2, 3, 4, 5]
    assert torch.equal(logits(model, ids), logits(loaded, ids))


def test_corrupt_or_truncated_weights_give_a_clear_error(tmp_path, model_dir):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        paragen.load(bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelLoadError):
        paragen.load(bad)


def test_missing_model_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a directory nor a built-in"):
        paragen.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        paragen.load(tmp_path / "empty")


def test_save_is_atomic(tmp_path, tokenizer):
    """A failure while writing leaves no half-written model directory behind."""
    model = tiny_model(2, vocab=tokenizer.vocab_size)

    class Boom(Exception):
        pass

    class BadTokenizer:
        def save(self, path):
            raise Boom()

    with pytest.raises(Boom):
        save_model(model, BadTokenizer(), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_hf_adapter_runs_bidirectional_models(tmp_path, tokenizer):
    """A paragen diffusion model (bidirectional) gives the same logits through transformers."""
    model = tiny_model(9, vocab=tokenizer.vocab_size, attention="bidirectional")
    path = save_model(model, tokenizer, tmp_path / "m", dtype=torch.float64)
    adapter = paragen.load(path, backend="hf", dtype=torch.float64)
    assert adapter.info.attention == "bidirectional"
    ids = [5, 9, 12, 7, 30]
    torch.testing.assert_close(logits(adapter, ids), logits(model, ids), rtol=1e-10, atol=1e-10)


def save_llama_without_tokenizer(path, vocab: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=64, eos_token_id=2, bos_token_id=1, pad_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(str(path))


def test_a_model_without_tokenizer_loads_and_takes_token_ids(tmp_path):
    from paragen.errors import InvalidInputError

    save_llama_without_tokenizer(tmp_path, vocab=60)
    with pytest.warns(UserWarning, match="has no tokenizer files: pass prompts as lists of token ids"):
        model = paragen.load(tmp_path)
    assert model.tokenizer is None
    with pytest.raises(InvalidInputError, match="no tokenizer: pass the prompt as a list of token ids"):
        paragen.generate(model, "def f():", max_new_tokens=2)
    assert len(paragen.generate(model, [3, 4, 5], max_new_tokens=2).tokens) == 2


def test_a_broken_tokenizer_gives_one_clear_line(tmp_path):
    save_llama_without_tokenizer(tmp_path, vocab=60)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "NoSuchTokenizer"}')
    with pytest.raises(ModelLoadError, match="no usable tokenizer") as e:
        paragen.load(tmp_path)
    assert "\n" not in str(e.value)


def test_a_sentencepiece_only_tokenizer_loads(tmp_path):
    """tokenizer.model alone (no tokenizer.json), trained here with sentencepiece itself."""
    import io

    import sentencepiece as spm

    from tests.helpers import TEXTS

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=buf, vocab_size=60, model_type="bpe",
                                   minloglevel=2)
    save_llama_without_tokenizer(tmp_path, vocab=60)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    model = paragen.load(tmp_path)
    text = "def add(a, b):"
    assert model.tokenizer.encode(text) == sp.encode(text)
    assert model.tokenizer.decode(sp.encode(text)) == text
    assert model.info.eos_ids == (sp.eos_id(),) == (model.tokenizer.eos_id,)
    out = paragen.generate(model, text, max_new_tokens=3)
    assert out.text == sp.decode(out.tokens)


def test_native_keeps_every_eos_id_of_the_config(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, eos_token_id=[0, 5], pad_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp_path))
    tokenizer.save(tmp_path)
    assert paragen.load(tmp_path).info.eos_ids == (0, 5) == paragen.load(tmp_path, backend="hf").info.eos_ids


def test_hf_adapter_uses_the_current_cache_argument(model_dir):
    """No FutureWarning (transformers renamed past_key_values to cache; the old name goes in 5.40)."""
    import warnings

    hf = paragen.load(model_dir, backend="hf")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = paragen.generate(hf, "def add(a, b):", "lookahead", max_new_tokens=8)
    assert out.tokens == paragen.generate(paragen.load(model_dir), "def add(a, b):", max_new_tokens=8).tokens
