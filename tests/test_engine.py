"""The serving engine: rows joining and leaving a running batch, against the float64 oracle.

Requests arrive at chosen steps while others run; every greedy row equals the no-cache
greedy decoder, every seeded sampled row equals ``paragen.generate`` of its prompt alone
with the same seed, sampled rows are distributed as the target, and cancelling, deadlines,
a full queue and the cache budget leave the other rows decoding.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import paragen
from paragen.heads import new_heads
from paragen.reference import reference_greedy
from paragen.request import check_request
from paragen.sampling import SamplingParams
from paragen.serve.engine import CacheBudgetError, Engine, Entry, QueueFull
from tests.helpers import DRAFT, TARGET, drive, exact_sequence_distribution, result, tv, tv_bound

HEADS = {kind: new_heads(TARGET, kind, 1 if kind == "eagle" else 2, seed=2) for kind in ("blockwise", "medusa", "eagle")}
OPTIONS: dict[str, dict[str, Any]] = {"tree": {"shape": "static", "widths": "2,1"}, "spectr": {"k": 2, "length": 2},
                                      "speculative": {"adaptive": True}, "lookup": {"max_ngram": 2}}
BATCHED = ["ar", "speculative", "lookup", "blockwise", "medusa", "hydra", "tree", "spectr", "eagle"]
PROMPTS = [[0, 1, 2, 0, 1], [3, 2], [1, 1, 1, 1, 1, 1, 1], [2, 3, 1], [0], [3, 3, 2, 1, 0, 3]]


def make_entry(strategy: str, prompt: list[int], n: int, temperature: float = 0.0, seed: int | None = None,
               deadline: float = float("inf")) -> tuple[Entry, list]:
    kind = {"blockwise": "blockwise", "medusa": "medusa", "hydra": "hydra", "eagle": "eagle"}.get(strategy)
    heads = (new_heads(TARGET, "hydra", 2, seed=2) if kind == "hydra" else HEADS[kind]) if kind else None
    draft = DRAFT if strategy in ("speculative", "tree", "spectr") else None
    request = check_request(TARGET, [prompt], strategy, n, temperature, None, None, seed, None, draft, heads,
                            dict(OPTIONS.get(strategy, {})))
    events: list = []
    return Entry(request, lambda kind, value: events.append((kind, value)), deadline=deadline), events


@pytest.mark.parametrize("strategy", BATCHED)
def test_rows_joining_and_leaving_a_running_batch_equal_the_oracle(strategy):
    """Six greedy requests of different lengths arriving at steps 0, 0, 1, 3, 4 and 9: each equals
    the no-cache greedy decoder, and the speculation policy tried both of its choices."""
    budgets = [12, 5, 9, 14, 7, 10]
    entries = [make_entry(strategy, p, n) for p, n in zip(PROMPTS, budgets)]
    arrivals = {0: [entries[0][0], entries[1][0]], 1: [entries[2][0]], 3: [entries[3][0]], 4: [entries[4][0]],
                9: [entries[5][0]]}
    engine = Engine(TARGET, max_batch=4)
    drive(engine, arrivals)
    for (_entry, events), prompt, n in zip(entries, PROMPTS, budgets):
        gen = result(events)
        assert gen.tokens == reference_greedy(TARGET, prompt, n), (prompt, n)
        assert "".join(v for k, v in events if k == "piece") == gen.text
    if strategy != "ar":  # a greedy draft-and-verify group measures both choices
        drafted = [result(ev).stats.extra["drafted_steps"] for _, ev in entries]
        steps = [sum(result(ev).stats.committed_per_call.values()) for _, ev in entries]
        assert any(0 < d < s for d, s in zip(drafted, steps)), (drafted, steps)


@pytest.mark.parametrize("strategy", ["ar", "speculative", "lookup", "blockwise", "tree", "spectr", "eagle"])
def test_seeded_sampled_rows_equal_their_request_alone(strategy):
    """Sampled rows with seeds, joining at different steps, beside greedy rows of another group:
    each is the same text as ``paragen.generate`` of its prompt alone with its seed."""
    sampled = [make_entry(strategy, p, 8, temperature=0.9, seed=100 + i) for i, p in enumerate(PROMPTS)]
    greedy = [make_entry("ar", p, 6) for p in PROMPTS[:3]]
    arrivals = {0: [sampled[0][0], greedy[0][0]], 1: [sampled[1][0], sampled[2][0]], 2: [greedy[1][0]],
                5: [sampled[3][0], sampled[4][0], greedy[2][0]], 6: [sampled[5][0]]}
    drive(Engine(TARGET, max_batch=5), arrivals)
    for i, ((entry, events), prompt) in enumerate(zip(sampled, PROMPTS)):
        r = entry.request
        alone = paragen.generate(TARGET, prompt, strategy, max_new_tokens=8, temperature=0.9, seed=100 + i,
                                 draft=r.draft, heads=r.heads, **OPTIONS.get(strategy, {}))
        assert result(events).tokens == alone.tokens, prompt
    for (_entry, events), prompt in zip(greedy, PROMPTS):
        assert result(events).tokens == reference_greedy(TARGET, prompt, 6)


@pytest.mark.slow
@pytest.mark.parametrize("strategy,params", [("ar", SamplingParams(1.0)), ("speculative", SamplingParams(0.8, top_p=0.9))])
def test_sampled_rows_in_a_running_batch_follow_the_target_distribution(strategy, params):
    """Rows arriving a few per step into a running batch of up to 16, each with its own seed:
    each prompt's sequences are distributed as the target (see tests/helpers.py for the bound)."""
    prompts, length, per_prompt = [[0, 1, 2, 0, 1], [3, 2]], 2, 1500
    entries, arrivals = [], {}
    for j in range(per_prompt * len(prompts)):
        prompt = prompts[j % len(prompts)]
        draft = DRAFT if strategy == "speculative" else None
        request = check_request(TARGET, [prompt], strategy, length, params.temperature, params.top_k, params.top_p, j,
                                None, draft, None, {})
        events: list = []
        entries.append((prompt, events))
        arrivals.setdefault(j // 5, []).append(Entry(request, lambda k, v, ev=events: ev.append((k, v))))
    drive(Engine(TARGET, max_batch=16, max_waiting=10_000), arrivals, max_steps=100_000)
    counts = {i: Counter() for i in range(len(prompts))}
    for j, (_prompt, events) in enumerate(entries):
        counts[j % len(prompts)][tuple(result(events).tokens)] += 1
    for i, prompt in enumerate(prompts):
        exact = exact_sequence_distribution(TARGET, prompt, length, params)
        assert tv(counts[i], exact, per_prompt) < tv_bound(len(exact), per_prompt), prompt


def test_cancel_and_deadline_drop_a_row_and_the_others_finish():
    keep = [make_entry("speculative", p, 10) for p in PROMPTS[:3]]
    gone, gone_events = make_entry("speculative", PROMPTS[3], 30)
    late, late_events = make_entry("ar", PROMPTS[4], 30, deadline=0.0)  # already past
    engine = Engine(TARGET, max_batch=8)
    for entry, _ in keep:
        engine.add(entry)
    engine.add(gone)
    engine.add(late)
    engine.step()
    engine.step()
    assert any(k == "piece" or k == "done" for k, _ in gone_events) or engine.running
    engine.cancel(gone)
    drive(engine, {})
    assert gone_events[-1] == ("cancelled", None) and late_events[-1] == ("timeout", None)
    for (_entry, events), prompt in zip(keep, PROMPTS):
        assert result(events).tokens == reference_greedy(TARGET, prompt, 10)
    assert engine.idle


def test_queue_full_and_cache_budget():
    engine = Engine(TARGET, max_batch=2, max_waiting=1, cache_tokens=64)
    first, _ = make_entry("ar", [1, 2], 20)
    engine.add(first)
    with pytest.raises(QueueFull):
        engine.add(make_entry("ar", [1, 2], 20)[0])
    with pytest.raises(CacheBudgetError, match="cache budget of 64"):
        engine.add(make_entry("ar", [1, 2], 80)[0])
    # rows that fit the budget one at a time run one after the other, both to the end
    engine = Engine(TARGET, max_batch=2, cache_tokens=40)
    (a, ea), (b, eb) = make_entry("ar", [1, 2], 20), make_entry("ar", [3], 20)
    drive(engine, {0: [a, b]})
    assert result(ea).tokens == reference_greedy(TARGET, [1, 2], 20)
    assert result(eb).tokens == reference_greedy(TARGET, [3], 20)


def test_one_prompt_strategies_run_as_groups_of_one_beside_a_batch():
    """jacobi and lookahead take one prompt: each request is its own group, taking turns with a batched group."""
    ones = [make_entry(s, p, 8) for s, p in (("jacobi", PROMPTS[0]), ("lookahead", PROMPTS[1]))]
    batch = [make_entry("lookup", p, 8) for p in PROMPTS[2:5]]
    drive(Engine(TARGET, max_batch=8), {0: [e for e, _ in ones + batch]})
    for (_entry, events), prompt in zip(ones + batch, PROMPTS):
        assert result(events).tokens == reference_greedy(TARGET, prompt, 8)
