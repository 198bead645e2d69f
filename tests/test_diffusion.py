"""The masked-diffusion strategies on tiny random models in float64: commit rules, caches,
the mask token, determinism, and clear errors."""

from __future__ import annotations

import pytest
import torch

import paragen
from paragen.errors import UnsupportedOptionError
from paragen.models.native import NativeModel
from paragen.sampling import SamplingParams, warp
from paragen.strategies.diffusion import DenoiseOptions, linear_schedule, propose, select
from tests.helpers import DIFFUSION_EOS as EOS
from tests.helpers import DIFFUSION_MASK as MASK
from tests.helpers import DIFFUSION_V as V
from tests.helpers import tiny_diffusion as tiny

PROMPT = [3, 1, 4, 1, 5]


def boosted(token: int, scale: float, **kw) -> NativeModel:
    """A model whose logit for ``token`` (tied embeddings) is scaled up, so it is often the argmax."""
    m = tiny(**kw)
    with torch.no_grad():
        m.model.embed_tokens.weight[token] *= scale
    return m


@pytest.fixture(scope="module")
def model() -> NativeModel:
    return tiny()


@pytest.fixture(scope="module", params=[False, True], ids=["unshifted", "shifted"])
def block_model(request) -> NativeModel:
    return tiny("block_causal", block_size=4, shift=request.param)


def run(model, strategy="diffusion", prompt=PROMPT, **kw):
    kw.setdefault("max_new_tokens", 12)
    return paragen.generate(model, prompt, strategy, **kw)


# --- commit rules -------------------------------------------------------------------------


def test_select_golden():
    s = torch.tensor([0.2, 0.7, 0.5, 0.9], dtype=torch.float64)
    assert select(s, DenoiseOptions(rule="threshold", threshold=0.5), 0).tolist() == [3, 1, 2]  # s >= tau, ties kept
    assert select(s, DenoiseOptions(rule="threshold", threshold=0.95), 0).tolist() == [3]  # none pass: the top one
    assert select(s, DenoiseOptions(rule="threshold", threshold=0.0), 0).tolist() == [3, 1, 2, 0]
    assert select(s, DenoiseOptions(rule="fixed"), 2).tolist() == [3, 1]
    # factor f = 1: n=1: 2(1-.9)=.2 < 1; n=2: 3(1-.7)=.9 < 1; n=3: 4(1-.5)=2 >= 1
    assert select(s, DenoiseOptions(rule="factor", factor=1.0), 0).tolist() == [3, 1]
    assert select(torch.tensor([0.1, 0.2], dtype=torch.float64), DenoiseOptions(rule="factor"), 0).tolist() == [1]
    # prefix: the leading run >= tau, left to right (0.2 < 0.5 stops it), at least the leftmost
    assert select(torch.tensor([0.6, 0.9, 0.2, 0.95], dtype=torch.float64), DenoiseOptions(rule="prefix", threshold=0.5),
                  0).tolist() == [0, 1]
    assert select(s, DenoiseOptions(rule="prefix", threshold=0.5), 0).tolist() == [0]  # the leftmost is below
    assert linear_schedule(10, 4) == [3, 3, 2, 2]
    assert linear_schedule(3, 8) == [1, 1, 1]


@pytest.mark.parametrize("ordering", ["low_confidence", "margin", "entropy"])
def test_threshold_above_one_commits_one_token_per_call(model, ordering):
    g = run(model, block_length=4, threshold=1.5, ordering=ordering)
    assert len(g.tokens) == 12 and g.stats.target_calls == 12
    assert g.stats.extra["unmasked_per_call"] == {1: 12}


def test_prefix_rule_commits_left_to_right(model):
    g = run(model, block_length=4, rule="prefix", threshold=0.3, max_new_tokens=12, trace=True)
    for call in g.trace.calls:
        kept = [call.positions[i] for i in call.accepted]
        assert kept == sorted(kept) and kept[0] == min(call.positions)  # the leftmost masks, in a run
        assert kept == list(range(kept[0], kept[0] + len(kept)))


def test_threshold_zero_commits_a_whole_block_per_call(model):
    g = run(model, block_length=4, threshold=0.0, max_new_tokens=10)  # blocks of 4, 4, 2
    assert len(g.tokens) == 10 and g.stats.target_calls == 3
    assert g.stats.committed_per_call == {4: 2, 2: 1}
    assert g.stats.extra["blocks"] == 3


def test_fixed_schedule(model):
    g = run(model, rule="fixed", steps=12, block_length=12)  # steps == length: one per call
    assert g.stats.target_calls == 12 and g.stats.extra["unmasked_per_call"] == {1: 12}
    g = run(model, rule="fixed", steps=2, block_length=4)  # two calls per block of four
    assert g.stats.target_calls == 6 and g.stats.extra["unmasked_per_call"] == {2: 6}
    g = run(model, rule="fixed", ordering="random", steps=3, block_length=6, seed=0)
    assert g.stats.target_calls == 6 and len(g.tokens) == 12


def test_factor_rule_commits_at_least_one(model):
    g = run(model, rule="factor", factor=2.0, block_length=6)
    assert len(g.tokens) == 12 and 2 <= g.stats.target_calls <= 12


# --- sampling and determinism -------------------------------------------------------------


def test_gumbel_max_samples_the_warped_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(V, generator=g, dtype=torch.float64) * 2
    params = SamplingParams(temperature=0.7, top_p=0.95)
    n = 40_000
    x, s = propose(logits.expand(n, -1), MASK, params, "low_confidence", g)
    z = logits.clone()
    z[MASK] = float("-inf")
    q = warp(z, params)
    freq = torch.bincount(x, minlength=V).double() / n
    assert freq[MASK] == 0 and 0.5 * (freq - q).abs().sum() < 0.02
    assert torch.all((s >= 0) & (s <= 1))


def test_temperature_zero_is_deterministic(model):
    a = run(model, seed=1, threshold=0.3, block_length=5)
    b = run(model, seed=2, threshold=0.3, block_length=5)
    assert a.tokens == b.tokens


def test_seeded_sampling_reproduces(model):
    kw = dict(temperature=1.0, top_k=20, threshold=0.2, block_length=4)
    a, b = run(model, seed=7, **kw), run(model, seed=7, **kw)
    assert a.tokens == b.tokens
    others = [run(model, seed=s, **kw).tokens for s in (8, 9, 10)]
    assert any(o != a.tokens for o in others)


# --- the mask token and EOS ---------------------------------------------------------------


def test_never_emits_the_mask_token():
    m = boosted(MASK, 8.0, seed=1)
    x = torch.tensor([PROMPT + [MASK] * 8])
    raw = m(x, torch.arange(x.shape[1])[None])[0, len(PROMPT):].argmax(-1)
    assert (raw == MASK).any()  # without suppression the model would emit it
    for kw in (dict(), dict(rule="fixed", ordering="random"), dict(rule="factor", ordering="margin", cache="dual"),
               dict(grow=True, ordering="entropy", cache="prefix")):
        for temperature in (0.0, 1.0):
            g = run(m, temperature=temperature, seed=0, block_length=4, **kw)
            assert MASK not in g.tokens and len(g.tokens) == 12
    b = boosted(MASK, 8.0, attention="block_causal", block_size=4, seed=1)
    for temperature in (0.0, 1.0):
        assert MASK not in run(b, "block_diffusion", temperature=temperature, seed=0).tokens


@pytest.mark.parametrize("strategy", ["diffusion", "block_diffusion"])
def test_grows_block_by_block_until_eos(strategy):
    attention = "bidirectional" if strategy == "diffusion" else "block_causal"
    m = boosted(EOS, 4.0, attention=attention, block_size=4, eos=EOS, seed=2)
    kw = dict(grow=True, block_length=4) if strategy == "diffusion" else {}
    g = run(m, strategy, prompt=[3, 1, 4, 1], max_new_tokens=60, threshold=0.0, **kw)
    assert g.stats.finish_reason == "eos" and len(g.tokens) < 60 and EOS not in g.tokens
    # one call per block (threshold 0): no block is opened past the one holding EOS
    assert g.stats.target_calls == g.stats.extra["blocks"] == len(g.tokens) // 4 + 1


# --- caches -------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt_len", [1, 3, 4, 6])
def test_block_diffusion_cache_is_exact(block_model, prompt_len):
    prompt = [(7 * i + 2) % 30 for i in range(prompt_len)]
    for kw in (dict(threshold=0.3), dict(rule="fixed", steps=2), dict(rule="factor", ordering="margin"),
               dict(temperature=1.0, seed=3, threshold=0.5)):
        cached = run(block_model, "block_diffusion", prompt=prompt, max_new_tokens=13, **kw)
        full = run(block_model, "block_diffusion", prompt=prompt, max_new_tokens=13, cache="none", **kw)
        assert cached.tokens == full.tokens, kw
        assert cached.stats.target_calls == full.stats.target_calls
        assert cached.stats.prefill_calls == (prompt_len >= 4)  # the prompt's whole blocks, once


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_approximate_caches_are_exact_when_every_call_refreshes(cache, shift):
    m = tiny(shift=shift)
    kw = dict(threshold=0.0, block_length=4)  # one call per block, and that call is the refresh
    assert run(m, cache=cache, **kw).tokens == run(m, **kw).tokens


@pytest.mark.parametrize("strategy", ["diffusion", "block_diffusion"])
def test_shifted_models_predict_each_position_from_the_one_before(strategy):
    """Golden: threshold 0 commits the whole first block in one call, the argmax of the rows
    that predict it: rows 4..7 of [prompt; masks] unshifted, rows 3..6 shifted."""
    prompt = [3, 1, 4, 2]  # a whole block, so the block mask over [prompt; masks] is block-causal
    blk = torch.arange(8) // 4
    mask = (blk[None, :] <= blk[:, None])[None] if strategy == "block_diffusion" else None
    for shift in (False, True):
        kw = dict(attention="block_causal", block_size=4) if strategy == "block_diffusion" else {}
        m = tiny(shift=shift, seed=3, **kw)
        logits = m(torch.tensor([prompt + [MASK] * 4]), torch.arange(8)[None], mask=mask)[0].clone()
        logits[:, MASK] = float("-inf")
        rows = logits[3:7] if shift else logits[4:8]
        extra = dict(block_length=4) if strategy == "diffusion" else {}
        g = run(m, strategy, prompt=prompt, threshold=0.0, max_new_tokens=4, **extra)
        assert g.stats.target_calls == 1 and g.tokens == rows.argmax(-1).tolist(), shift


def test_cache_audit_reports_deviation(model):
    kw = dict(cache="dual", block_length=4, threshold=1.5, max_new_tokens=8)
    g = run(model, audit=True, **kw)
    rec = g.stats.extra["cache_audit"]
    assert rec["calls"] == 6 and g.stats.extra["cache_refreshes"] == 2  # 8 calls, 2 of them refreshes
    assert g.stats.target_calls == 8 + 6  # audit calls are counted
    assert 0 <= rec["argmax_disagreement"] <= 1 and rec["max_logit_diff"] > 0
    assert g.tokens == run(model, **kw).tokens  # auditing does not change the output


# --- errors -------------------------------------------------------------------------------


def test_rejects_models_it_cannot_run(model):
    with pytest.raises(UnsupportedOptionError, match="causal"):
        run(tiny("causal"))
    with pytest.raises(UnsupportedOptionError, match="mask token"):
        run(tiny(mask=None))
    with pytest.raises(UnsupportedOptionError, match="block_diffusion"):
        run(tiny("block_causal", block_size=4))
    with pytest.raises(UnsupportedOptionError, match="'diffusion'"):
        run(model, "block_diffusion")
    with pytest.raises(UnsupportedOptionError, match="block_length"):
        run(model, block_length=0)
    with pytest.raises(UnsupportedOptionError, match="block_size"):
        run(tiny("block_causal"), "block_diffusion")


@pytest.mark.parametrize("bad", [
    dict(ordering="best"), dict(rule="greedy"), dict(steps=0), dict(threshold=-0.1), dict(factor=0.0),
    dict(ordering="random"), dict(ordering="random", rule="factor"), dict(audit=True), dict(cache="full"),
    dict(block_length=0), dict(length=5),
])
def test_rejects_bad_options(model, bad):
    with pytest.raises(UnsupportedOptionError):
        run(model, **bad)


def test_block_diffusion_options(block_model):
    with pytest.raises(UnsupportedOptionError):
        run(block_model, "block_diffusion", cache="dual")
    with pytest.raises(UnsupportedOptionError):
        run(block_model, "block_diffusion", block_length=8)  # the block size is the model's
    g = run(block_model, "block_diffusion", threshold="0.5", rule="threshold")  # CLI strings convert
    assert len(g.tokens) == 12
