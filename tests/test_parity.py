"""Parity with transformers' own forward, per architecture family, for both backends.

Each case saves a tiny random model with transformers' ``save_pretrained`` (plus the
built-in code-target tokenizer), loads it through ``paragen.load`` and compares, in
float64, against ``AutoModelForCausalLM.from_pretrained(...)(input_ids).logits``, the
forward transformers itself runs (no paragen masks):

- a full forward over the sequence;
- an incremental decode through the contract cache: a prefill, then token by token;
- a tree-shaped chunk with an explicit mask (two branches sharing a depth, so positions
  repeat), then ``cache.keep`` of one path and one more token;
- two deeper branches laid out breadth first, where slots and positions drift apart.

Where the native backend does not compute an architecture it must refuse it by name.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

import paragen
from paragen.errors import ModelLoadError
from paragen.models.io import BUILTIN_DIR

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
VOCAB = 4096  # the code-target tokenizer's
SEQ = [17, 400, 9, 2050, 33, 7, 801, 64, 1200, 5, 3000, 42]
TOL = dict(rtol=1e-9, atol=1e-9)


@dataclass(frozen=True)
class Case:
    """One architecture: a transformers config and what the native backend must do with it."""

    name: str
    config_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    native: str | None = None  # None: native is exact; otherwise a regex of its refusal
    # transformers' eager attention (Gemma-2's, for soft-capping) takes its softmax in float32
    # even in a float64 model: a chunk whose masked slots lie elsewhere sums in another order,
    # so agreement is float32's (a wrong mask differs by ~1e-1, not 1e-6).
    tol: dict[str, float] = field(default_factory=lambda: TOL)


SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None, eos_token_id=0, bos_token_id=0)
OTHER_ARCH = "the native backend reads llama, qwen2 and mistral models, not '{}'; try backend='hf'"

CASES = [
    Case("llama", "LlamaConfig", dict(tie_word_embeddings=True)),
    Case("llama-untied", "LlamaConfig", dict(tie_word_embeddings=False)),
    Case("llama-gelu", "LlamaConfig", dict(hidden_act="gelu")),
    Case("llama-gelu-tanh", "LlamaConfig", dict(hidden_act="gelu_pytorch_tanh")),
    Case("llama-gelu-new", "LlamaConfig", dict(hidden_act="gelu_new")),
    Case("llama-biases", "LlamaConfig", dict(mlp_bias=True, attention_bias=True)),
    Case("llama-head-dim", "LlamaConfig", dict(head_dim=16)),
    Case("llama-relu2", "LlamaConfig", dict(hidden_act="relu2"), native="hidden_act 'relu2': not supported by the native"),
    Case("llama-linear-rope", "LlamaConfig", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
         native="rope scaling 'linear': not supported by the native backend"),
    Case("qwen2", "Qwen2Config"),
    # layer 0 attends fully, layers 1 and 2 slide (max_window_layers): both kinds of layer in one model
    Case("qwen2-sliding", "Qwen2Config", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1)),
    Case("mistral", "MistralConfig", dict(sliding_window=None)),
    Case("mistral-sliding", "MistralConfig", dict(sliding_window=4)),
    Case("phi3", "Phi3Config", dict(sliding_window=4), native=OTHER_ARCH.format("phi3")),
    Case("gemma", "GemmaConfig", dict(head_dim=8), native=OTHER_ARCH.format("gemma")),
    # alternating sliding/full layers, attention and final logit soft-capping (eager attention)
    Case("gemma2", "Gemma2Config", dict(head_dim=8, sliding_window=4, query_pre_attn_scalar=8, attn_logit_softcapping=5.0,
                                        final_logit_softcapping=3.0), native=OTHER_ARCH.format("gemma2"),
         tol=dict(rtol=1e-5, atol=1e-5)),
    Case("gpt2", "GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, eos_token_id=0,
                                    bos_token_id=0), native=OTHER_ARCH.format("gpt2")),
]


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (biases and norm scales included), so a skipped one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64) * (0.3 if p.dim() > 1 else 0.1)
            base = 1.0 if p.dim() == 1 and ("norm" in name or ".ln_" in name) else 0.0
            p.copy_(base + noise)


def save_transformers_model(tmp_path: Path, case: Case) -> Path:
    import transformers

    kwargs = case.kwargs if case.config_class == "GPT2Config" else {**SMALL, **case.kwargs}
    config = getattr(transformers, case.config_class)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.float64)
    randomize(model, seed=len(case.name))
    path = tmp_path / case.name
    model.save_pretrained(str(path))
    for name in TOKENIZER_FILES:
        shutil.copy(BUILTIN_DIR / "code-target" / name, path / name)
    return path


def reference(path: Path):
    """transformers' own forward: its default attention and its own masks."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float64, local_files_only=True).eval()

    def logits(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return ref(torch.tensor([ids])).logits[0]

    return logits


def step(model, cache, ids: list[int], positions: list[int], mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]), torch.tensor([positions]), cache=cache, mask=mask)[0]


def check_against_transformers(model, ref, tol: dict[str, float]) -> None:
    # 1. the whole sequence at once
    full = ref(SEQ)
    torch.testing.assert_close(step(model, None, SEQ, list(range(len(SEQ)))), full, **tol)
    # 2. prefill 5 tokens, then one token at a time (past the sliding window of 4)
    cache = model.new_cache(1, 64)
    got = [step(model, cache, SEQ[:5], list(range(5)))]
    cache.commit(5)
    for i in range(5, len(SEQ)):
        got.append(step(model, cache, [SEQ[i]], [i]))
        cache.commit(1)
    torch.testing.assert_close(torch.cat(got), full, **tol)
    # 3. a tree after 5 committed tokens: a -> {b, c}, c -> d, positions 5, 6, 6, 7
    cache.truncate(5)
    a, b, c, d, e = 11, 12, 13, 14, 15
    tree = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    out = step(model, cache, [a, b, c, d], [5, 6, 6, 7], tree[None])
    path_acd, path_ab = ref(SEQ[:5] + [a, c, d]), ref(SEQ[:5] + [a, b])
    torch.testing.assert_close(out[[0, 2, 3]], path_acd[5:], **tol)
    torch.testing.assert_close(out[1], path_ab[6], **tol)
    # keep the path a, c, d (compacted to slots 5..7), then one more token
    cache.keep([0, 2, 3])
    torch.testing.assert_close(step(model, cache, [e], [8])[0], ref(SEQ[:5] + [a, c, d, e])[8], **tol)
    # 4. two branches of depth 6 laid out breadth first (x1 y1 x2 y2 ...): slots drift from
    #    positions along a path, so a window taken by slot instead of position shows
    cache.truncate(5)
    xs, ys = [21, 22, 23, 24, 25, 26], [31, 32, 33, 34, 35, 36]
    chunk = [t for pair in zip(xs, ys) for t in pair]
    slot_branch = torch.arange(12) % 2
    slot_depth = torch.arange(12) // 2
    tree = (slot_branch[:, None] == slot_branch[None, :]) & (slot_depth[None, :] <= slot_depth[:, None])
    out = step(model, cache, chunk, [5 + int(d) for d in slot_depth], tree[None])
    torch.testing.assert_close(out[0::2], ref(SEQ[:5] + xs)[5:], **tol)
    torch.testing.assert_close(out[1::2], ref(SEQ[:5] + ys)[5:], **tol)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hf_adapter_matches_transformers(tmp_path, case):
    path = save_transformers_model(tmp_path, case)
    check_against_transformers(paragen.load(path, backend="hf", dtype=torch.float64), reference(path), case.tol)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_native_matches_transformers_or_refuses(tmp_path, case):
    path = save_transformers_model(tmp_path, case)
    if case.native is not None:
        with pytest.raises(ModelLoadError, match=re.escape(case.native)):
            paragen.load(path, dtype=torch.float64)
        return
    check_against_transformers(paragen.load(path, dtype=torch.float64), reference(path), case.tol)


def test_native_defaults_are_transformers_defaults():
    """The native reader's table of defaults (fields absent from config.json) equals transformers' classes."""
    from transformers import AutoConfig

    from paragen.models.io import _DEFAULTS

    for kind, defaults in _DEFAULTS.items():
        config = AutoConfig.for_model(kind)
        for name, value in defaults.items():
            # Qwen2Config clears sliding_window when use_sliding_window is off; the table keeps the raw default.
            raw = getattr(type(config), name, getattr(config, name)) if name == "sliding_window" else getattr(config, name)
            assert raw == value, (kind, name, raw, value)
        assert config.rope_parameters["rope_theta"] == 10000.0


def test_llama_config_without_tie_field_is_untied(tmp_path):
    """transformers reads an absent tie_word_embeddings as false for Llama: so does native."""
    path = save_transformers_model(tmp_path, Case("llama-untied", "LlamaConfig", dict(tie_word_embeddings=False)))
    cfg = json.loads((path / "config.json").read_text())
    del cfg["tie_word_embeddings"]
    (path / "config.json").write_text(json.dumps(cfg))
    native = paragen.load(path, dtype=torch.float64)
    torch.testing.assert_close(step(native, None, SEQ, list(range(len(SEQ)))), reference(path)(SEQ), **TOL)


def test_tie_mismatch_with_the_weights_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_transformers_model(tmp_path, Case("llama-untied", "LlamaConfig", dict(tie_word_embeddings=False)))
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    with pytest.raises(ModelLoadError, match="holds? a different lm_head.weight"):
        paragen.load(path)
    # untied (by absence) but no head in the weights
    state = load_file(str(path / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    del cfg["tie_word_embeddings"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="no lm_head.weight but tie_word_embeddings is absent"):
        paragen.load(path)


PARTIAL_ROPE = {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}


@pytest.mark.parametrize("extra", [{"attn_logit_softcapping": 50.0}, {"logits_scaling": 2.0}, {"rope_parameters": PARTIAL_ROPE}])
def test_native_refuses_fields_it_does_not_read(tmp_path, extra):
    path = save_transformers_model(tmp_path, Case("llama", "LlamaConfig"))
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, **extra}))
    with pytest.raises(ModelLoadError, match="not supported by the native backend; try backend='hf'"):
        paragen.load(path)


def test_rope_parameters_win_over_a_legacy_rope_theta(tmp_path):
    """transformers reads rope_parameters' theta when config.json also has a top-level rope_theta."""
    path = save_transformers_model(tmp_path, Case("llama", "LlamaConfig"))
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "rope_theta": 500000.0}))
    native = paragen.load(path, dtype=torch.float64)
    torch.testing.assert_close(step(native, None, SEQ, list(range(len(SEQ)))), reference(path)(SEQ), **TOL)


@pytest.mark.parametrize("backend", ["native", "hf"])
@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("qwen2-sliding", "mistral-sliding")], ids=lambda c: c.name)
def test_lossless_strategies_equal_transformers_greedy_under_a_sliding_window(tmp_path, case, backend):
    """Trees, Jacobi windows and drafts through the window: every lossless strategy equals
    greedy decoding with transformers' own full forward (no cache) at every step."""
    path = save_transformers_model(tmp_path, case)
    model, ref = paragen.load(path, backend=backend, dtype=torch.float64), reference(path)
    prompt, n = SEQ + SEQ[:6], 16
    seq, expected = list(prompt), []
    for _ in range(n):
        token = int(ref(seq)[-1].argmax())
        if token in model.info.eos_ids:
            break
        seq.append(token)
        expected.append(token)
    assert len(expected) > 8  # long enough to slide past the window of 4
    for strategy, extra in [("ar", {}), ("lookup", {}), ("jacobi", {}), ("lookahead", {}), ("speculative", {"draft": model})]:
        out = paragen.generate(model, prompt, strategy, max_new_tokens=n, **extra)
        assert out.tokens == expected, strategy


@pytest.mark.parametrize("name", ["llama-biases", "llama-gelu-new", "llama-head-dim", "qwen2-sliding", "mistral-sliding"])
def test_save_model_writes_what_transformers_reads_back(tmp_path, name):
    """A native model loaded from one of these architectures saves to a config transformers computes identically."""
    from paragen.models.io import save_model

    case = next(c for c in CASES if c.name == name)
    native = paragen.load(save_transformers_model(tmp_path, case), dtype=torch.float64)
    out = save_model(native, native.tokenizer, tmp_path / "saved", dtype=torch.float64)
    assert json.loads((out / "config.json").read_text())["model_type"] == name.split("-")[0]
    torch.testing.assert_close(reference(out)(SEQ), step(native, None, SEQ, list(range(len(SEQ)))), **TOL)
