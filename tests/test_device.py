"""Devices: ``load(device=)``, ``--device``, clear errors for devices that do not exist here or
models on different devices; tests marked ``gpu`` repeat the oracle, cache and distribution
checks on CUDA (skipped without a GPU)."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch

import paragen
from paragen.cli import main
from paragen.errors import DeviceError
from paragen.models import device_of, parse_device
from paragen.reference import reference_greedy
from paragen.sampling import SamplingParams
from paragen.strategies import STRATEGIES
from tests.helpers import OTHER_DRAFT, AdversarialDraft, ragged_prompts, tiny_model

MODEL = tiny_model(0)
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cpu:0"])
def test_cpu_devices_load_and_decode(model_dir, device):
    model = paragen.load(model_dir, device=device)
    assert device_of(model) == torch.device("cpu")
    assert paragen.generate(model, "def add(a, b):", max_new_tokens=8).tokens == \
        paragen.generate(paragen.load(model_dir), "def add(a, b):", max_new_tokens=8).tokens


@pytest.mark.parametrize("device,needle", [("banana", "unknown device"), ("mps", "not supported"), (3.5, "unknown device")])
def test_unknown_devices_are_refused(device, needle):
    with pytest.raises(DeviceError, match=needle):
        parse_device(device)


@pytest.mark.skipif(CUDA, reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so(model_dir, capsys):
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        paragen.load(model_dir, device="cuda")
    assert main(["generate", "x", "--model", str(model_dir), "--device", "cuda:1"]) != 0
    err = capsys.readouterr().err.strip()
    assert "no CUDA GPU" in err and len(err.splitlines()) == 1


class Elsewhere(AdversarialDraft):
    """A draft that says it lives on another device (no GPU needed to check the refusal)."""

    device = torch.device("cuda", 0)


def test_target_and_draft_on_different_devices_are_refused():
    with pytest.raises(DeviceError, match="one device"):
        paragen.generate(MODEL, [1, 2, 3], "speculative", max_new_tokens=4, draft=Elsewhere(MODEL))


def test_the_generator_lives_on_the_model_device():
    """Sampling on the model's device: seeded runs reproduce, on a CPU model with the CPU generator."""
    a = paragen.generate(MODEL, [[1, 2], [3, 4, 5]], "ar", max_new_tokens=6, temperature=1.0, seed=4)
    b = paragen.generate(MODEL, [[1, 2], [3, 4, 5]], "ar", max_new_tokens=6, temperature=1.0, seed=4)
    assert [r.tokens for r in a] == [r.tokens for r in b]


# ---------------------------------------------------------------- on a GPU


def on_cuda(model):
    return model.to("cuda")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name,options,draft", [("ar", {}, None), ("lookup", {}, None), ("speculative", {"k": 3}, OTHER_DRAFT),
                                                ("speculative", {"k": 2}, "adversarial")])
def test_cuda_batches_equal_the_cpu_oracle(name, options, draft):
    model = on_cuda(tiny_model(0))
    if draft == "adversarial":
        draft = AdversarialDraft(model)
    elif draft is not None:
        draft = on_cuda(tiny_model(5))
    prompts = ragged_prompts(1, 6, 50)
    rows = paragen.generate(model, prompts, name, max_new_tokens=17, draft=draft, **options)
    for prompt, row in zip(prompts, rows):
        assert row.tokens == reference_greedy(MODEL, prompt, 17), name


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name,kind,options", [
    ("blockwise", "blockwise", {}), ("medusa", "medusa", {}), ("hydra", "hydra", {"widths": "2,2"}), ("eagle", "eagle", {}),
])
def test_cuda_heads_strategies_equal_the_cpu_oracle(name, kind, options):
    """Heads bind to the model's weights where they are: on CUDA every heads strategy builds
    its inputs there (batched ones on a ragged batch, eagle on one prompt)."""
    from paragen.heads import new_heads

    model = on_cuda(tiny_model(0))
    heads = new_heads(model, kind, 1 if kind == "eagle" else 3, seed=1, zero_out=False)
    assert heads.proj.device.type == "cuda"
    prompts = ragged_prompts(1, 6 if STRATEGIES[name].batched else 1, 50)
    rows = paragen.generate(model, prompts, name, max_new_tokens=17, heads=heads, **options)
    for prompt, row in zip(prompts, rows):
        assert row.tokens == reference_greedy(MODEL, prompt, 17), name


@pytest.mark.gpu
@gpu
def test_cuda_cache_rows_are_isolated():
    model = on_cuda(tiny_model(0))
    seqs = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    cache = model.new_cache(batch=3, max_length=16)
    assert cache.device.type == "cuda"
    with torch.inference_mode():
        x = torch.tensor([s[:-1] + [0] * (7 - len(s)) for s in seqs], device="cuda")
        model(x, cache.slots(6), cache=cache, mask=cache.mask(6))
        cache.commit_rows([len(s) - 1 for s in seqs])
        last = torch.tensor([[s[-1]] for s in seqs], device="cuda")
        batched = model(last, cache.slots(1), cache=cache, mask=cache.mask(1))[:, 0].cpu()
    for i, s in enumerate(seqs):
        alone = MODEL(torch.tensor([s]), torch.arange(len(s))[None])[0, -1]
        torch.testing.assert_close(batched[i], alone.detach(), rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("strategy", ["ar", "speculative", "lookup"])
def test_cuda_sampled_rows_follow_the_target_distribution(strategy):
    from tests.helpers import TARGET, exact_sequence_distribution, tv, tv_bound

    target, draft = on_cuda(tiny_model(11, vocab=4, std=0.3)), on_cuda(tiny_model(12, vocab=4, std=0.6))
    params, prompt, length, copies, calls = SamplingParams(0.9, top_p=0.95), [0, 1, 2, 0, 1], 2, 50, 60
    counts: Counter = Counter()
    for seed in range(calls):
        rows = paragen.generate(target, [prompt] * copies, strategy, max_new_tokens=length, temperature=0.9,
                                top_p=0.95, seed=seed, draft=draft if strategy == "speculative" else None)
        counts.update(tuple(r.tokens) for r in rows)
    exact = exact_sequence_distribution(TARGET, prompt, length, params)
    assert tv(counts, exact, copies * calls) < tv_bound(len(exact), copies * calls)


@pytest.mark.gpu
@gpu
def test_cuda_step_copies_to_the_host_once():
    """CUDA's sync debug mode warns at every copy that waits for the GPU: the decode loop makes
    one per step (the committed tokens), plus the prefill's setup."""
    model = on_cuda(tiny_model(0))
    draft = on_cuda(tiny_model(5))
    paragen.generate(model, [[1, 2, 3], [4, 5]], "speculative", max_new_tokens=4, draft=draft)  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = paragen.generate(model, [[1, 2, 3], [4, 5]], "speculative", max_new_tokens=24, draft=draft, k=3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    steps = max(r.stats.target_calls for r in rows)
    assert len(syncs) <= steps + 2, [str(w.message) for w in syncs[:5]]


def test_train_refuses_a_missing_device_before_reading_the_corpus():
    from paragen.train.lm import TrainConfig

    with pytest.raises(DeviceError):
        TrainConfig(device="banana")
    assert TrainConfig(device="cpu").device == "cpu"


@pytest.mark.gpu
@gpu
def test_train_lm_on_cuda_with_bf16_autocast(tmp_path):
    """A few steps of `paragen train lm --device cuda`: the loss is finite and the saved model
    loads on the CPU and on the GPU."""
    from paragen.train.lm import TrainConfig, train_lm
    from tests.helpers import TINY_TRAIN

    rec = train_lm(TrainConfig(out=str(tmp_path / "m"), steps=20, device="cuda", **{**TINY_TRAIN, "precision": "bf16"}),
                   progress=False)
    assert rec["heldout_loss"] == rec["heldout_loss"] and rec["heldout_loss"] < 10
    for device in ("cpu", "cuda"):
        model = paragen.load(tmp_path / "m", device=device)
        assert len(paragen.generate(model, "def f(", max_new_tokens=4).tokens) >= 1
