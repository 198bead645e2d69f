"""The native backend's packed decode step (fused projections, weight formats) and its compiled step
against the plain module-by-module path: same logits in float64, same tokens on the built-in model."""

from __future__ import annotations

import pytest
import torch

import paragen
from paragen.errors import InvalidInputError
from paragen.models.native import NativeConfig, NativeModel, RMSNorm, rms_norm
from paragen.reference import reference_greedy
from tests.helpers import tiny_model

PROMPTS = [
    "def fibonacci(n):\n    ",
    "import os\n\n\nclass Config:\n    def __init__(self",
    "    for i in range(10):\n",
    'def parse(text):\n    """Split text into words."""\n',
]


def calls(model: NativeModel, prompt: list[int], steps: list[tuple[int, torch.Tensor | None]]) -> list[torch.Tensor]:
    """Logits of a prefill, then of each (T, mask) call fed on the cache (committing all T tokens)."""
    cache = model.new_cache(max_length=64)
    out = [model(torch.tensor([prompt]), torch.arange(len(prompt))[None], cache=cache)]
    cache.commit(len(prompt))
    g = torch.Generator().manual_seed(0)
    for T, mask in steps:
        toks = torch.randint(0, model.info.vocab_size, (1, T), generator=g)
        out.append(model(toks, torch.arange(cache.length, cache.length + T)[None], cache=cache, mask=mask))
        cache.commit(T)
    return out


TREE = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)  # two siblings under one root
STEPS = [(1, None), (4, None), (3, TREE), (1, None)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_rms_norm_is_rmsnorm_bit_for_bit(dtype):
    norm = RMSNorm(48, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, dtype=dtype))
    x = torch.randn(2, 5, 48, dtype=dtype) * 3
    assert torch.equal(rms_norm(x, norm.weight, norm.eps), norm(x))


@pytest.mark.parametrize("kw", [{}, {"bias": True}], ids=["llama", "qwen2-biases"])
def test_packed_path_equals_plain_path_in_float64(kw):
    model = tiny_model(**kw)
    prompt = [3, 7, 1, 4, 9, 2]
    plain = calls(model, prompt, STEPS)
    packed = calls(model.pack(), prompt, STEPS)
    assert model.packed is not None
    for a, b in zip(plain, packed):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    assert reference_greedy(model, prompt, 20) == paragen.generate(model, prompt, max_new_tokens=20).tokens


def test_packed_path_under_a_sliding_window():
    cfg = NativeConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, sliding_window=3, layer_types=("sliding_attention", "full_attention"))
    model = NativeModel(cfg).init_weights(1, std=0.5).double().eval()
    prompt = list(range(2, 12))
    plain = calls(model, prompt, STEPS)
    for a, b in zip(plain, calls(model.pack(), prompt, STEPS)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


def test_packed_weights_follow_in_place_edits_and_train_unpacks():
    model = tiny_model().pack()
    prompt = [3, 7, 1, 4]
    with torch.no_grad():  # the named parameters are views of the fused weights: an edit reaches both paths
        model.model.layers[0].self_attn.k_proj.weight.mul_(2)
        model.model.layers[1].mlp.up_proj.weight.add_(0.1)
    packed = calls(model, prompt, STEPS)
    plain = calls(model.unpack(), prompt, STEPS)
    for a, b in zip(plain, packed):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
    model.pack().train()
    assert model.packed is None
    assert set(model.state_dict()) == set(tiny_model().state_dict())  # Hugging Face names unchanged


def test_weight_formats_refuse_a_non_float32_model():
    with pytest.raises(ValueError, match="float32"):
        tiny_model().pack("fp16-weights")
    with pytest.raises(ValueError, match="unknown weight format"):
        tiny_model().float().pack("int4")


def test_fp16_weights_are_exact_on_float16_valued_weights_and_say_so_otherwise():
    model = tiny_model().float()
    assert model.pack("fp16-weights").weight_format == "fp16-weights (lossy)"  # random float32 weights round
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model.pack("fp16-weights")
    assert model.weight_format == "fp16-weights"
    prompt = [3, 7, 1, 4, 9, 2]
    packed = calls(model, prompt, STEPS)
    plain = calls(model.unpack(), prompt, STEPS)
    for a, b in zip(plain, packed):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # float32 sums, in another order


def test_int8_weights_are_labelled_lossy_and_stay_close():
    model = tiny_model().float()
    prompt = [3, 7, 1, 4, 9, 2]
    plain = calls(model, prompt, STEPS)
    quant = calls(model.pack("int8-weights"), prompt, STEPS)
    for a, b in zip(plain, quant):
        assert not torch.equal(a, b)
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    gen = paragen.generate(model, prompt, max_new_tokens=5)
    assert gen.stats.extra["weights"] == "int8-weights (lossy)"


def test_load_refuses_formats_on_the_hf_backend_and_unknown_dtypes(model_dir):
    with pytest.raises(InvalidInputError, match="native backend"):
        paragen.load(model_dir, backend="hf", dtype="int8-weights")
    with pytest.raises(InvalidInputError, match="unknown dtype 'int4'"):
        paragen.load(model_dir, dtype="int4")
    with pytest.raises(InvalidInputError, match="compile=True runs float32"):
        paragen.load(model_dir, dtype="fp16-weights", compile=True)
    model = paragen.load(model_dir, dtype="fp16-weights")
    assert model.packed.weights == "fp16-weights" and model.dtype == torch.float32


@pytest.mark.slow
def test_compiled_step_equals_the_eager_step():
    model = tiny_model().float().pack()
    prompt = [3, 7, 1, 4, 9, 2]
    steps = [(1, None), (3, TREE), (1, None)]  # two compiled graphs (each length and mask kind compiles once)
    eager = calls(model, prompt, steps)
    compiled = calls(model.compile_decode(), prompt, steps)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert paragen.generate(model, prompt, max_new_tokens=30).tokens == reference_greedy(model.unpack(), prompt, 30)


@pytest.fixture(scope="module")
def code_target():
    return paragen.load("code-target")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "fp16-weights"])
def test_packed_and_exact_formats_give_the_plain_tokens_on_the_builtin_model(code_target, dtype):
    packed = code_target if dtype == "float32" else paragen.load("code-target", dtype=dtype)
    assert packed.packed is not None
    plain = paragen.load("code-target").unpack()
    for prompt in PROMPTS:
        want = paragen.generate(plain, prompt, max_new_tokens=128).tokens
        assert paragen.generate(packed, prompt, max_new_tokens=128).tokens == want, prompt


def test_a_cast_after_packing_packs_again():
    model = tiny_model().float().pack()
    prompt = [3, 7, 1, 4, 9, 2]
    model.double()
    assert model.packed.dtype == torch.float64
    packed = calls(model, prompt, STEPS)
    for a, b in zip(calls(model.unpack(), prompt, STEPS), packed):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,options,draft", [
    ("ar", {}, False), ("lookup", {}, False), ("jacobi", {}, False), ("lookahead", {}, False),
    ("speculative", {"k": 4}, True), ("tree", {}, True),
])
def test_every_lossless_strategy_on_the_packed_path_equals_the_plain_oracle(name, options, draft):
    """The float64 oracle (no cache, plain path) against strategies on packed models (masks, trees, caches)."""
    target, other = tiny_model(0), tiny_model(1)
    prompts = [[3, 7, 1, 4, 9, 2, 3, 7, 1], [5], list(range(2, 30))]
    expected = [reference_greedy(target, p, 30) for p in prompts]
    target.pack()
    other.pack()
    for p, want in zip(prompts, expected):
        got = paragen.generate(target, p, name, max_new_tokens=30, draft=other if draft else None, **options).tokens
        assert got == want, (name, p)
