"""The compiled decode step (``NativeModel.compile_decode``): calls padded to a few sizes, pads
inert, every strategy's tokens equal to the eager step's (float64), a bounded number of graphs.

Compiling is slow (seconds per graph), so these tests share one compiled float64 model and a
compiled draft, and are marked slow; the GPU test captures CUDA graphs."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import paragen
from paragen.heads import new_heads
from paragen.models.native import TOKEN_BUCKETS, token_bucket
from paragen.models.native.compiled import HotGraphs
from paragen.reference import reference_greedy
from paragen.strategies import get_strategy
from tests.helpers import tiny_model

pytestmark = pytest.mark.slow

PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [7, 8], [9, 9, 9, 9, 1, 2]]


GRAPHS_BEFORE: list[int] = []  # torch's graph count when this module's models were made


@pytest.fixture(scope="module")
def compiled():
    """(eager target, compiled target, compiled draft, eagle heads on the compiled target)."""
    GRAPHS_BEFORE.append(counters["stats"]["unique_graphs"])  # the count is process-wide: other modules compile too
    eager = tiny_model(0)
    target = tiny_model(0).pack().compile_decode()
    draft = tiny_model(5).pack().compile_decode()
    return eager, target, draft, new_heads(target, "eagle", 3, seed=0, std=0.3)


def test_buckets():
    assert [token_bucket(t) for t in (1, 2, 3, 5, 8, 9, 33, 64)] == [1, 2, 4, 8, 8, 16, 64, 64]
    assert token_bucket(65) is None


def test_a_padded_call_equals_the_unpadded_eager_call(compiled):
    """5 tokens per row run the 8-token graph: the real logits and the cache's real slots equal
    the eager call's, on ragged rows (each row writes at its own slots), and so does the next
    call, which reuses the slots the pads wrote. Equal within 1e-5, not bit for bit: a float64
    model normalises in float32 (as Hugging Face's RMSNorm does), which compiled code rounds
    differently (~1e-6); a pad that leaked into a real token would move its logits by ~0.1."""
    eager, target, _, _ = compiled
    outs = []
    for model in (eager, target):
        cache = model.new_cache(batch=3, max_length=64)
        seqs = [p[:-1] for p in PROMPTS]
        width = max(map(len, seqs))
        tokens = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        model(tokens, cache.slots(width), cache=cache, mask=cache.mask(width))
        cache.commit_rows([len(s) for s in seqs])
        g = torch.Generator().manual_seed(1)
        new = torch.randint(0, 50, (3, 5), generator=g)
        logits = model(new, cache.slots(5), cache=cache, mask=cache.mask(5))
        rows = cache.rows
        cache.commit_rows([3, 5, 1])  # the rows keep different shares: later calls see the pads' slots
        after = model(torch.randint(0, 50, (3, 2), generator=g), cache.slots(2), cache=cache, mask=cache.mask(2))
        outs.append((logits, after, [cache.k[0][b, :, : r + 1] for b, r in enumerate(rows)]))
    (a, a2, ka), (b, b2, kb) = outs
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b2, a2, rtol=1e-5, atol=1e-5)
    for x, y in zip(ka, kb):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


CASES = ["ar", "lookup", "speculative", "tree", "eagle", "auto"]


@pytest.mark.parametrize("name", CASES)
def test_every_strategy_compiled_equals_the_oracle(compiled, name):
    """Batch 1 and a ragged batch of 3, crossing bucket boundaries (lookup's and tree's calls
    vary in size): the oracle's tokens."""
    eager, target, draft, heads = compiled
    kw = {"speculative": {"draft": draft}, "tree": {"draft": draft}, "eagle": {"heads": heads},
          "auto": {"draft": draft, "heads": heads, "schedule": "ar:1,lookup:1,speculative:1,tree:1,eagle:1"}}
    rows = paragen.generate(target, PROMPTS, name, max_new_tokens=20, **kw.get(name, {}))
    for prompt, row in zip(PROMPTS, rows):
        assert row.tokens == reference_greedy(eager, prompt, 20), (name, prompt)
    assert paragen.generate(target, PROMPTS[0], name, max_new_tokens=12, **kw.get(name, {})).tokens == \
        reference_greedy(eager, PROMPTS[0], 12)


def test_after_warm_up_no_call_compiles(compiled):
    """``warm_up`` compiles every graph a decode of up to 17 tokens per call can run (eagle's
    default tree; buckets 1-32, one row and several, causal and masked): the strategies after
    it, at other cache sizes and context lengths, compile no graph of their own."""
    _, target, draft, heads = compiled
    tokens = max(get_strategy(n).call_tokens(get_strategy(n).Options()) for n in ("speculative", "eagle"))
    assert tokens == 17
    assert target.warm_up(tokens, rows=3) == draft.warm_up(tokens, rows=3) == 6 * 2 * 2
    assert heads.compiled is not None and heads.warm_up(tokens) == 6 * 2  # the drafter's rows are one
    before = counters["stats"]["unique_graphs"]
    for prompts, n in ((PROMPTS, 20), (PROMPTS[:1], 12), ([[i % 50 for i in range(1, 60)]], 30)):
        paragen.generate(target, prompts, "speculative", max_new_tokens=n, draft=draft)
        paragen.generate(target, prompts, "eagle", max_new_tokens=n, heads=heads)
    assert counters["stats"]["unique_graphs"] == before


def test_auto_compiles_a_graph_once_its_eager_calls_repay_it():
    """``compile="auto"`` (``HotGraphs``): a graph runs eagerly until its calls' eager time times
    the gain reaches the compile's cost, then compiled; the first compiled call's time becomes
    the cost. Tokens equal the oracle's either way."""
    hot = HotGraphs()
    key = (1, False, False)
    hot.compile_seconds = 1.0
    due = 1.0 / HotGraphs.GAIN  # eager seconds whose saving would have paid the compile
    hot.ran_eager(key, 0.75 * due)
    assert not hot.wants(key) and not hot.wants((2, False, False))
    hot.ran_eager(key, 0.25 * due + 1e-6)
    assert hot.wants(key)
    hot.ran_compiled(key, 0.5)
    assert hot.wants(key) and hot.compile_seconds == 0.5
    hot.ran_compiled(key, 0.01)  # later compiled calls are not compiles
    assert hot.compile_seconds == 0.5

    eager = tiny_model(0)
    model = tiny_model(0).pack().compile_decode(auto=True)
    model.hot.compile_seconds = 1e9  # never repaid: every call eager
    assert paragen.generate(model, PROMPTS[0], "ar", max_new_tokens=12).tokens == reference_greedy(eager, PROMPTS[0], 12)
    assert not model.hot.ready and model.hot.eager_seconds[(1, False, False)] > 0
    model.hot.compile_seconds = 0.0  # repaid at once: compiled from the next call on
    assert paragen.generate(model, PROMPTS[0], "ar", max_new_tokens=12).tokens == reference_greedy(eager, PROMPTS[0], 12)
    assert model.hot.ready == {(1, False, False)} and model.hot.compile_seconds > 0

    warmed = tiny_model(0).pack().compile_decode(auto=True)  # warm_up compiles under auto too
    warmed.hot.compile_seconds = 1e9
    before = counters["stats"]["unique_graphs"]
    assert warmed.warm_up(2) == 4 and counters["stats"]["unique_graphs"] == before + 4
    assert warmed.hot.ready == {(n, False, masked) for n in (1, 2) for masked in (False, True)}
    assert paragen.generate(warmed, PROMPTS[0], "ar", max_new_tokens=12).tokens == reference_greedy(eager, PROMPTS[0], 12)
    assert not warmed.hot.eager_seconds  # every call ran a warmed graph


def test_the_graphs_compiled_stay_within_the_buckets(compiled):
    """After every test above (this module's graphs only): per model and bucket at most four
    graphs (one row or several, causal or explicit mask) at every cache size (the slots
    attended are a dynamic size), and no bucket reached torch's recompile limit (its calls would run eagerly)."""
    for name in CASES:
        test_every_strategy_compiled_equals_the_oracle(compiled, name)
    graphs = counters["stats"]["unique_graphs"] - GRAPHS_BEFORE[0]
    assert 0 < graphs <= (4 + 4 + 2) * len(TOKEN_BUCKETS)  # target, draft, and the EAGLE drafter (one row)
    assert not any("recompile_limit" in str(k) or "cache_size_limit" in str(k) for k in counters["recompiles"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_step_equals_the_cpu_oracle():
    """On CUDA the compiled buckets run as CUDA graphs (mode reduce-overhead): the oracle's tokens."""
    cpu = tiny_model(0)
    target = tiny_model(0).to("cuda").pack().compile_decode()
    draft = tiny_model(5).to("cuda").pack().compile_decode()
    for name, kw in (("ar", {}), ("speculative", {"draft": draft}), ("tree", {"draft": draft})):
        rows = paragen.generate(target, PROMPTS, name, max_new_tokens=16, **kw)
        for prompt, row in zip(PROMPTS, rows):
            assert row.tokens == reference_greedy(cpu, prompt, 16), (name, prompt)
