"""Batched decoding: every row of a batch equals its batch-of-one run, token for token and step
for step (greedy, float64), with ragged prompts, rows that finish early (EOS, stop strings,
budget) and drafts that are always or never accepted; sampled rows follow the target's
distribution; bad batches get clear errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import paragen
from paragen.cache import KVCache
from paragen.errors import InvalidInputError, UnsupportedOptionError
from paragen.heads import new_heads
from paragen.reference import reference_greedy
from paragen.request import MAX_BATCH
from paragen.sampling import SamplingParams
from paragen.strategies import STRATEGIES
from tests.helpers import (
    DRAFT,
    OTHER_DRAFT,
    TARGET,
    AdversarialDraft,
    OracleHeads,
    exact_sequence_distribution,
    ragged_prompts,
    tiny_model,
    tv,
    tv_bound,
)

MODEL = tiny_model(0)
EOS_MODEL = tiny_model(7, vocab=12, eos=3)  # EOS comes up often: rows finish at different steps
EOS_DRAFT = tiny_model(8, vocab=12, eos=3)


class FlakyDraft(AdversarialDraft):
    """Agrees with the target except at every third position: rows accept different numbers
    of tokens per step, so their budgets and adaptive k drift apart while most drafts are right."""

    def forward(self, tokens, positions, cache=None, mask=None):
        logits = self.target(tokens, positions, cache=cache, mask=mask)
        best = logits.argmax(-1)
        token = torch.where(positions % 3 == 0, (best + 1) % logits.shape[-1], best)
        return torch.nn.functional.one_hot(token, logits.shape[-1]).to(logits.dtype) * 10.0


CASES = [
    ("ar", {}, None),
    ("lookup", {}, None),
    ("lookup", {"max_ngram": 2, "max_draft": 3}, None),
    ("speculative", {"k": 3}, OTHER_DRAFT),  # rows reject at different places
    ("speculative", {"k": 4}, MODEL),  # everything accepted
    ("speculative", {"k": 2}, AdversarialDraft(MODEL)),  # nothing accepted
    ("speculative", {"k": 5, "adaptive": True}, OTHER_DRAFT),  # each row adapts its own k
    ("speculative", {"k": 4}, FlakyDraft(MODEL)),  # rows drift apart: some rows' k is cut by their budget
    ("speculative", {"k": 4, "adaptive": True}, FlakyDraft(MODEL)),
    ("tree", {}, OTHER_DRAFT),  # dynamic trees: each row's own shape, padded into one forward
    ("tree", {"shape": "static", "widths": "2,2,1"}, MODEL),  # every row accepts its whole depth
    ("tree", {"budget": 6, "depth": 3}, FlakyDraft(MODEL)),
    ("spectr", {"k": 3, "length": 3}, OTHER_DRAFT),
]


def same_steps(row: paragen.Generation, alone: paragen.Generation) -> None:
    """A row's tokens and step statistics are those of its batch-of-one run."""
    assert row.tokens == alone.tokens
    assert row.text == alone.text
    assert row.stats.finish_reason == alone.stats.finish_reason
    assert row.stats.target_calls == alone.stats.target_calls
    assert row.stats.committed_per_call == alone.stats.committed_per_call
    assert row.stats.extra == alone.stats.extra


@pytest.mark.parametrize("name,options,draft", CASES)
def test_every_row_equals_its_batch_of_one_run(name, options, draft):
    model = MODEL
    prompts = ragged_prompts(1, 6, 50)
    rows = paragen.generate(model, prompts, name, max_new_tokens=17, draft=draft, **options)
    assert isinstance(rows, list) and len(rows) == len(prompts)
    for prompt, row in zip(prompts, rows):
        alone = paragen.generate(model, prompt, name, max_new_tokens=17, draft=draft, **options)
        if name == "spectr":  # it samples its k drafts even when greedy, from the generator the rows
            assert row.tokens == alone.tokens  # share: the same output, but not the same trees
        else:
            same_steps(row, alone)
        assert row.tokens == reference_greedy(model, prompt, 17)


@pytest.mark.parametrize("name,kind,options,zero_out", [
    ("blockwise", "blockwise", {}, False),  # random heads: rows reject at different places
    ("blockwise", "blockwise", {"k": 2}, True),  # heads that start as the target's next-token prediction
    ("blockwise", "medusa", {"k": 3}, False),
    ("blockwise_relaxed", "blockwise", {"m": 40}, False),  # LOSSY: accepts often, differs from ar
    ("medusa", "medusa", {}, False),  # a tree per row, padded to one size in the forward
    ("medusa", "blockwise", {"widths": "3,2"}, True),
    ("hydra", "hydra", {"widths": "2,2,1"}, False),  # heads that read each node's path
    ("medusa_typical", "medusa", {"epsilon": 0.5}, False),  # LOSSY
    ("eagle", "eagle", {"budget": 8, "depth": 3}, False),  # a drafter (and its cache) per row
])
def test_heads_rows_equal_their_batch_of_one_run(name, kind, options, zero_out):
    """Heads strategies in a batch: each row drafts (a chain or a tree) from its own hidden
    state (one-token prompts included: they draft nothing on their first step) and keeps its
    own accepted path."""
    heads = new_heads(MODEL, kind, 1 if kind == "eagle" else 4, seed=1, zero_out=zero_out)
    prompts = [[7], *ragged_prompts(3, 5, 50)]
    rows = paragen.generate(MODEL, prompts, name, max_new_tokens=17, heads=heads, **options)
    for prompt, row in zip(prompts, rows):
        same_steps(row, paragen.generate(MODEL, prompt, name, max_new_tokens=17, heads=heads, **options))
        if STRATEGIES[name].lossless:
            assert row.tokens == reference_greedy(MODEL, prompt, 17)
    if name == "blockwise_relaxed":  # the relaxed rule ran: some row left ar's output
        assert any(r.tokens != reference_greedy(MODEL, p, 17) for p, r in zip(prompts, rows))


class OracleRows(torch.nn.Module):
    """``OracleHeads`` for a batch: each state is answered by the oracle of the prompt whose
    trajectory holds it (a state on none of them fails the lookup's assertion)."""

    kind, num_heads = "blockwise", 4

    def __init__(self, oracles: list[OracleHeads]) -> None:
        super().__init__()
        self.oracles = oracles
        self.embed, self.proj = oracles[0].embed, oracles[0].proj

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        near = [min(self.oracles, key=lambda o: float((o.keys - h).norm(dim=-1).min())) for h in hidden]
        return torch.stack([o(h) for o, h in zip(near, hidden)])


@pytest.mark.parametrize("name,options", [("blockwise", {"k": 3}), ("medusa", {"widths": "2,1,1"})])
def test_heads_rows_with_perfect_heads_accept_every_proposal(name, options):
    """Perfect heads in a batch: every row accepts all 3 drafted tokens at every step (each
    row's state is its own, or the oracle lookup fails) and still equals ar."""
    # trajectories whose states are all distinct (a greedy loop repeats states: ambiguous lookups)
    candidates = [p for p in ragged_prompts(4, 40, 50, repeat=False) if len(p) > 1]
    oracles = [o for o in (OracleHeads(MODEL, p, 20, "blockwise") for p in candidates) if o.unambiguous][:5]
    prompts = [o.future[: -20 - 4 - 2] for o in oracles]
    assert len(prompts) == 5
    rows = paragen.generate(MODEL, prompts, name, max_new_tokens=20, heads=OracleRows(oracles), **options)
    for prompt, row in zip(prompts, rows):
        assert row.tokens == reference_greedy(MODEL, prompt, 20)
        assert row.stats.extra["accepted"] == row.stats.extra["proposed"]
        assert row.stats.target_calls == 5  # 4 + 4 + 4 + 4 + 4 tokens


@pytest.mark.parametrize("name,options", [("ar", {}), ("lookup", {"max_draft": 4}), ("speculative", {"k": 3})])
def test_rows_finishing_at_eos_leave_the_batch(name, options):
    draft = EOS_DRAFT if name == "speculative" else None
    prompts = ragged_prompts(2, 8, 12)
    rows = paragen.generate(EOS_MODEL, prompts, name, max_new_tokens=25, draft=draft, **options)
    reasons = Counter(r.stats.finish_reason for r in rows)
    assert reasons["eos"] and reasons["length"], "the fixture must mix early and full-length rows"
    calls = {r.stats.target_calls for r in rows}
    assert len(calls) > 1  # rows that finished took part in fewer calls
    for prompt, row in zip(prompts, rows):
        same_steps(row, paragen.generate(EOS_MODEL, prompt, name, max_new_tokens=25, draft=draft, **options))
        assert row.tokens == reference_greedy(EOS_MODEL, prompt, 25)


def test_stop_strings_and_text_prompts_in_a_batch(model_dir):
    model = paragen.load(model_dir)
    prompts = ["def add(a, b):", "class Point:", "for i in range(10):\n", "import os\n"]
    full = paragen.generate(model, prompts, "ar", max_new_tokens=30)
    stop = full[0].text[2:4]  # a string the first row is known to contain
    for name in ["ar", "lookup", "speculative"]:
        draft = model if name == "speculative" else None
        rows = paragen.generate(model, prompts, name, max_new_tokens=30, stop=stop, draft=draft)
        assert rows[0].stats.finish_reason == "stop"
        for prompt, row in zip(prompts, rows):
            same_steps(row, paragen.generate(model, prompt, name, max_new_tokens=30, stop=stop, draft=draft))


@pytest.mark.slow
def test_builtin_code_target_batch_equals_batch_of_one():
    """float32, the shipped target and draft, HumanEval prompts of different lengths: every
    batched row equals the prompt's batch-of-one ar run (the strategies are lossless)."""
    from paragen.tasks import humaneval

    target = paragen.load("code-target")
    draft = paragen.load("code-draft")
    prompts = [t.prompt for t in humaneval()[:3]]
    alone = [paragen.generate(target, p, "ar", max_new_tokens=24).tokens for p in prompts]
    for name, d in [("ar", None), ("lookup", None), ("speculative", draft)]:
        rows = paragen.generate(target, prompts, name, max_new_tokens=24, draft=d)
        assert [r.tokens for r in rows] == alone, name


def test_a_batch_of_one_is_a_list_for_every_strategy():
    rows = paragen.generate(MODEL, [[1, 2, 3]], "jacobi", max_new_tokens=8)
    assert len(rows) == 1 and rows[0].tokens == reference_greedy(MODEL, [1, 2, 3], 8)


@pytest.mark.slow
@pytest.mark.parametrize("strategy,params", [
    ("ar", SamplingParams(1.0)),
    ("speculative", SamplingParams(0.8, top_p=0.9)),
    ("lookup", SamplingParams(1.2, top_k=3)),
    ("blockwise", SamplingParams(0.9)),
    ("medusa", SamplingParams(1.0, top_k=4)),
    ("tree", SamplingParams(0.8)),
    ("spectr", SamplingParams(1.0, top_p=0.9)),
])
def test_sampled_rows_follow_the_target_distribution(strategy, params):
    """Each prompt of a ragged batch (many copies of each, so one call yields many samples)
    is distributed as the target; see tests/helpers.py for the bound."""
    prompts = [[0, 1, 2, 0, 1], [3, 2], [1, 1, 1, 1, 1, 1, 1]]
    copies, calls, length = 20, 120, 2
    n = copies * calls
    draft = DRAFT if strategy in ("speculative", "tree", "spectr") else None
    options = {"tree": {"shape": "static", "widths": "2,1", "draw": "without"}, "spectr": {"k": 2, "length": 2}}
    heads = new_heads(TARGET, "blockwise", 2, seed=2) if strategy in ("blockwise", "medusa") else None
    counts = {i: Counter() for i in range(len(prompts))}
    for seed in range(calls):
        batch = [p for p in prompts for _ in range(copies)]
        seeds = [seed * len(batch) + j for j in range(len(batch))]  # every copy its own sample
        rows = paragen.generate(TARGET, batch, strategy, max_new_tokens=length, temperature=params.temperature,
                                top_k=params.top_k, top_p=params.top_p, seed=seeds, draft=draft, heads=heads,
                                **options.get(strategy, {}))
        for j, row in enumerate(rows):
            counts[j // copies][tuple(row.tokens)] += 1
    for i, prompt in enumerate(prompts):
        exact = exact_sequence_distribution(TARGET, prompt, length, params)
        assert tv(counts[i], exact, n) < tv_bound(len(exact), n), prompt
    if strategy in ("speculative", "blockwise"):  # the residual path ran too
        acc = sum(sum(r.stats.extra["accepted"]) for r in rows)
        assert 0 < acc < sum(sum(r.stats.extra["proposed"]) for r in rows)


def test_rows_draw_independent_samples():
    """Identical prompts in one batch do not all draw the same sequence."""
    rows = paragen.generate(TARGET, [[0, 1]] * 16, "ar", max_new_tokens=6, temperature=1.0, seed=3)
    assert len({tuple(r.tokens) for r in rows}) > 1


def test_cache_rows_are_isolated():
    """Per-row lengths: a row's logits do not depend on what the other rows hold."""
    model = MODEL
    seqs = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    cache = model.new_cache(batch=3, max_length=16)
    assert isinstance(cache, KVCache)
    with torch.inference_mode():
        x = torch.tensor([s[:-1] + [0] * (7 - len(s)) for s in seqs])
        model(x, cache.slots(6), cache=cache, mask=cache.mask(6))
        cache.commit_rows([len(s) - 1 for s in seqs])
        last = torch.tensor([[s[-1]] for s in seqs])
        batched = model(last, cache.slots(1), cache=cache, mask=cache.mask(1))[:, 0]
        for i, s in enumerate(seqs):
            alone = model(torch.tensor([s]), torch.arange(len(s))[None])[0, -1]
            torch.testing.assert_close(batched[i], alone, rtol=1e-9, atol=1e-9)
        cache.select([2, 0])  # the middle row finished
        assert cache.rows == [3, 6]


@pytest.mark.parametrize("prompt,needle", [
    ([], "empty list"),
    (["text", [1, 2]], "mixes strings and token-id lists"),
    ([[1, 2], 3], "not a mix"),
    ([[1, 2]] * (MAX_BATCH + 1), "MAX_BATCH"),
    ([[1, 2], []], "empty"),
])
def test_bad_batches_raise_clear_errors(prompt, needle):
    with pytest.raises(InvalidInputError, match=needle):
        paragen.generate(MODEL, prompt, "ar", max_new_tokens=4)


def test_strategies_that_do_not_batch_say_which_do(model_dir):
    with pytest.raises(UnsupportedOptionError, match="decode a batch are ar, speculative, tree"):
        paragen.generate(MODEL, [[1, 2], [3]], "jacobi", max_new_tokens=4)
    with pytest.raises(InvalidInputError, match="generate"):
        paragen.stream(MODEL, [[1, 2], [3]], "ar", max_new_tokens=4)
    hf = paragen.load(model_dir, backend="hf")
    with pytest.raises(UnsupportedOptionError, match="native"):
        paragen.generate(hf, ["a", "b"], "ar", max_new_tokens=4)


def test_bench_batch_size(model_dir, tmp_path, capsys):
    """``paragen bench --batch-size``: each row's record holds the tokens of its batch-of-one
    run, and the rows' seconds add up to the batches' wall time."""
    from paragen.cli import main

    tiny = model_dir
    out = tmp_path / "b"
    assert main(["bench", "--strategies", "speculative,lookup", "--limit", "3", "--max-new-tokens", "8", "--model",
                 str(tiny), "--draft", str(tiny), "--batch-size", "2", "--no-progress", "--out", str(out)]) == 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["config"]["batch_size"] == 2 and bench["config"]["device"] == "cpu"
    model = paragen.load(tiny)
    prompts = {t["id"]: model.tokenizer.encode(t["prompt"]) for t in bench["tasks"]}
    assert len(bench["records"]) == 9
    for r in bench["records"]:
        assert r["tokens"] == paragen.generate(model, prompts[r["task_id"]], "ar", max_new_tokens=8).tokens
    assert all(s["exact"] == 1.0 for s in bench["summary"].values())
    for flags, needle in [(["--strategies", "jacobi"], "--strategies ar,speculative,tree"),
                          (["--strategies", "hf-greedy"], "one prompt at a time"),
                          (["--batch-size", "0"], "--batch-size must be between 1 and"),
                          (["--device", "banana"], "unknown device")]:
        args = ["bench", "--model", str(tiny), "--limit", "1", "--batch-size", "2", "--out", str(tmp_path / "x"), *flags]
        assert main(args) == 2
        assert needle in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["ar", "speculative", "lookup", "blockwise", "medusa", "tree", "spectr", "eagle"])
def test_a_seeded_sampled_row_is_the_same_text_alone_and_in_a_batch(strategy):
    """Every row draws from a generator of its own (OpenAI's per-request seed): a seeded row
    gives the same tokens whatever else is in its batch (other prompts, budgets and seeds)."""
    prompts = [[0, 1, 2, 0, 1], [3, 2], [1, 1, 1, 1, 1, 1, 1], [2, 3, 1]]
    seeds, budgets = [11, 12, 13, 14], 9
    draft = DRAFT if strategy in ("speculative", "tree", "spectr") else None
    kind = {"blockwise": "blockwise", "medusa": "medusa", "eagle": "eagle"}.get(strategy)
    heads = new_heads(TARGET, kind, 1 if kind == "eagle" else 2, seed=2) if kind else None
    options = {"tree": {"shape": "static", "widths": "2,1", "draw": "without"}, "spectr": {"k": 2, "length": 2},
               "speculative": {"adaptive": True}}.get(strategy, {})
    args = dict(temperature=0.9, top_k=3, draft=draft, heads=heads, **options)
    rows = paragen.generate(TARGET, prompts, strategy, max_new_tokens=budgets, seed=seeds, **args)
    for prompt, seed, row in zip(prompts, seeds, rows):
        alone = paragen.generate(TARGET, prompt, strategy, max_new_tokens=budgets, seed=seed, **args)
        assert row.tokens == alone.tokens, (prompt, seed)
    again = paragen.generate(TARGET, prompts[::-1], strategy, max_new_tokens=budgets, seed=seeds[::-1], **args)
    assert [r.tokens for r in again[::-1]] == [r.tokens for r in rows]
