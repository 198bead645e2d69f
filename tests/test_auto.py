"""``auto``: exact under any switching (greedy = the no-cache oracle, sampled = the target's law),
a controller that finds the fastest candidate, and the call-cost cache."""

from __future__ import annotations

import itertools
import json
import warnings
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import paragen
from paragen import costs as costs_mod
from paragen.costs import CallCosts, call_costs, interpolate
from paragen.errors import UnsupportedOptionError
from paragen.heads import new_heads
from paragen.reference import reference_greedy
from paragen.sampling import SamplingParams
from paragen.strategies.auto import AutoOptions, Controller
from tests.helpers import DRAFT, PROMPT, TARGET, exact_sequence_distribution, tiny_model, tv, tv_bound

TARGETS = {seed: tiny_model(seed) for seed in range(2)}
DRAFT_MODEL = tiny_model(5)
HEADS = {(seed, kind): new_heads(TARGETS[seed], kind, 3, seed=seed, std=0.3)
         for seed in TARGETS for kind in ("eagle", "medusa", "hydra", "blockwise")}
HEADS_OF = {"eagle": "eagle", "medusa": "medusa", "hydra": "hydra", "blockwise": "blockwise"}
NAMES = ["ar", "lookup", "speculative", "tree", "eagle", "medusa", "hydra", "blockwise"]

KEYS = itertools.count()
schedules = st.lists(st.tuples(st.sampled_from(NAMES), st.integers(1, 3)), min_size=2, max_size=6)


def run_case(seed: int, kind: str, plan: list[tuple[str, int]]) -> tuple[object, dict]:
    """The target and auto's keyword arguments: a draft, heads of ``kind``, a forced plan over
    the candidates those allow (a planned candidate the models lack runs as ar)."""
    schedule = ",".join(f"{n}:{s}" for n, s in plan)
    return TARGETS[seed], dict(draft=DRAFT_MODEL, heads=HEADS[(seed, kind)], schedule=schedule)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(TARGETS)), kind=st.sampled_from(sorted(HEADS_OF)),
       prompt=st.lists(st.integers(0, 49), min_size=1, max_size=20), n=st.integers(1, 36), plan=schedules)
def test_forced_switches_equal_the_oracle(seed, kind, prompt, n, plan):
    """Whatever candidate runs each step (forced at random), greedy auto is the oracle's output."""
    model, kw = run_case(seed, kind, plan)
    out = paragen.generate(model, prompt, "auto", max_new_tokens=n, **kw)
    assert out.tokens == reference_greedy(model, prompt, n)
    segments = out.stats.extra["auto"]["segments"]
    assert sum(s["tokens"] for s in segments) >= len(out.tokens)
    assert sum(s["calls"] for s in segments) == out.stats.target_calls


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(sorted(TARGETS)), kind=st.sampled_from(sorted(HEADS_OF)),
       prompts=st.lists(st.lists(st.integers(0, 49), min_size=1, max_size=16), min_size=2, max_size=4),
       n=st.integers(1, 30), plan=schedules)
def test_forced_switches_in_ragged_batches_equal_the_oracle(seed, kind, prompts, n, plan):
    """A batch switches as one; rows leave at their own times; each row is the oracle's."""
    model, kw = run_case(seed, kind, plan)
    outs = paragen.generate(model, prompts, "auto", max_new_tokens=n, **kw)
    for prompt, out in zip(prompts, outs):
        assert out.tokens == reference_greedy(model, prompt, n)


def test_controller_run_equals_the_oracle_and_uses_several_candidates(monkeypatch):
    """Left to its controller (no plan), auto still gives the oracle's tokens, and a first
    generation (nothing learnt before in this process) tries every candidate the models allow."""
    from paragen.strategies import auto

    monkeypatch.setattr(auto, "LEARNT", {})
    model = TARGETS[0]
    prompt = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
    out = paragen.generate(model, prompt, "auto", max_new_tokens=40, draft=DRAFT_MODEL, heads=HEADS[(0, "eagle")])
    assert out.tokens == reference_greedy(model, prompt, 40)
    info = out.stats.extra["auto"]
    assert info["candidates"] == ["ar", "lookup", "speculative", "tree", "eagle"]
    tried = {s["strategy"] for s in info["segments"]}
    assert {"ar", "speculative", "tree", "eagle"} <= tried


@pytest.mark.slow
def test_builtin_models_auto_equals_the_oracle():
    """The shipped target, draft and heads (float64): the controller's choices and a forced plan."""
    from paragen.tasks import humaneval

    target = paragen.load("code-target", dtype=torch.float64)
    draft = paragen.load("code-draft", dtype=torch.float64)
    for task in humaneval()[:2]:
        ids = target.tokenizer.encode(task.prompt)
        expected = reference_greedy(target, ids, 32)
        for kw in ({}, {"draft": draft}, {"draft": draft, "schedule": "eagle:2,lookup:1,speculative:1,tree:1,ar:1"}):
            assert paragen.generate(target, ids, "auto", max_new_tokens=32, **kw).tokens == expected, (task.id, kw)


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["speculative:1,ar:1", "lookup:1,speculative:1", "ar:1,tree:1"])
def test_sampled_auto_with_switches_follows_the_target_distribution(plan):
    """Forced switches at every step: the sequences are distributed as the target's."""
    params, length, n = SamplingParams(1.0), 3, 5000
    exact = exact_sequence_distribution(TARGET, PROMPT, length, params)
    counts: Counter = Counter()
    for i in range(n):
        out = paragen.generate(TARGET, PROMPT, "auto", max_new_tokens=length, temperature=1.0, seed=i, draft=DRAFT,
                               schedule=plan, candidates="ar,lookup,speculative,tree")
        counts[tuple(out.tokens)] += 1
    assert tv(counts, exact, n) < tv_bound(len(exact), n)


def test_bad_options_say_what_to_do():
    with pytest.raises(UnsupportedOptionError, match="unknown candidate"):
        paragen.generate(TARGETS[0], [1, 2], "auto", candidates="ar,nope")
    with pytest.raises(UnsupportedOptionError, match="NAME:STEPS"):
        paragen.generate(TARGETS[0], [1, 2], "auto", schedule="ar:0")
    with pytest.raises(UnsupportedOptionError, match="runs on these models"):
        paragen.generate(TARGETS[0], [1, 2], "auto", candidates="speculative")  # no draft given


# ---------------------------------------------------------------- the controller on synthetic costs


def synthetic_costs(per_token: float = 0.1) -> CallCosts:
    """A target call costs 1 + per_token * n; a draft call 0.1. A key of its own: nothing
    learnt by another test's controller (``auto.LEARNT``) carries over."""
    return CallCosts(key=f"synthetic-{next(KEYS)}", batch=1, target={n: 1.0 + per_token * n for n in costs_mod.BUCKETS},
                     draft={n: 0.1 for n in costs_mod.BUCKETS})


def simulate(ctl: Controller, tokens_of, steps: int) -> list[str]:
    """Run the controller against per-candidate tokens-per-step functions of the step index;
    seconds are the cost model's (ratio 1): ar feeds 1 token, the others 4 (3 drafts)."""
    chosen = []
    for i in range(steps):
        name = ctl.choose()
        chosen.append(name)
        t = tokens_of[name](i)
        fed, drafted = (1, 0) if name == "ar" else (4, 3 if name == "speculative" else 0)
        ctl.observe(name, t, ctl.predicted(name, fed, drafted), fed, drafted)
        if name == "speculative":
            ctl.observe_chain(3, [int(t) - 1])
    return chosen


def test_controller_converges_to_the_best_candidate_and_explores_a_bounded_share():
    ctl = Controller(["ar", "tree", "eagle"], synthetic_costs(), AutoOptions(explore=16))
    chosen = simulate(ctl, {"ar": lambda i: 1.0, "tree": lambda i: 2.0, "eagle": lambda i: 3.0}, 400)
    later = Counter(chosen[50:])
    assert later.most_common(1)[0][0] == "eagle"
    assert later["eagle"] / sum(later.values()) >= 1 - 1 / 16 - 0.01  # exploring: at most one step in 16


def test_controller_switches_when_the_best_changes():
    """tree is best for 200 steps, then eagle: the controller follows within a window or two."""
    ctl = Controller(["ar", "tree", "eagle"], synthetic_costs(), AutoOptions(explore=8, window=8))
    tokens = {"ar": lambda i: 1.0, "tree": lambda i: 3.0 if i < 200 else 1.2, "eagle": lambda i: 1.5 if i < 200 else 3.0}
    chosen = simulate(ctl, tokens, 400)
    assert Counter(chosen[100:200]).most_common(1)[0][0] == "tree"
    assert Counter(chosen[300:]).most_common(1)[0][0] == "eagle"


def test_controller_prefers_ar_when_extra_tokens_cost_a_call_each():
    """When a call's cost grows with every fed token as fast as tokens come, drafting cannot pay."""
    ctl = Controller(["ar", "tree"], synthetic_costs(per_token=1.0), AutoOptions())
    chosen = simulate(ctl, {"ar": lambda i: 1.0, "tree": lambda i: 1.5}, 200)
    assert Counter(chosen[50:]).most_common(1)[0][0] == "ar"


def test_speculative_k_follows_acceptance():
    ctl = Controller(["ar", "speculative"], synthetic_costs(per_token=0.01), AutoOptions())
    for _ in range(200):
        ctl.observe_chain(8, [8])  # every draft accepted: long chains pay
    assert ctl.speculative_k()[0] == 8
    for _ in range(400):
        ctl.observe_chain(8, [0])  # none accepted: the shortest
    assert ctl.speculative_k()[0] == 1


# ---------------------------------------------------------------- the cost cache


def test_interpolation_between_and_beyond_buckets():
    c = {1: 1.0, 2: 2.0, 4: 3.0}
    assert interpolate(c, 1) == 1.0 and interpolate(c, 3) == 2.5 and interpolate(c, 6) == 4.0


def test_cost_cache_is_keyed_by_threads_and_dtype_and_survives_processes(tmp_path, monkeypatch):
    path = tmp_path / "costs.json"
    monkeypatch.setattr(costs_mod, "_MEMORY", {})
    model = TARGETS[0]
    a = call_costs(model, 3, path=path)
    assert a.batch == 4 and set(a.target) == set(costs_mod.BUCKETS) and all(s > 0 for s in a.target.values())
    stored = json.loads(path.read_text())["costs"]
    assert list(stored) == [a.key]
    monkeypatch.setattr(costs_mod, "_MEMORY", {})  # a new process: read from the file, not measured
    assert call_costs(model, 4, path=path) == a
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)
        other = call_costs(model, 4, path=path)
    finally:
        torch.set_num_threads(before)
    assert other.key != a.key
    assert call_costs(model.float(), 4, path=path).key not in (a.key, other.key)
    model.double()
    assert len(json.loads(path.read_text())["costs"]) == 3
    fresh = call_costs(model, 4, path=path, refresh=True)
    assert fresh.key == a.key and fresh.seconds > 0


def test_corrupt_cost_cache_is_ignored_with_a_warning(tmp_path, monkeypatch):
    path = tmp_path / "costs.json"
    path.write_text("{not json")
    monkeypatch.setattr(costs_mod, "_MEMORY", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = call_costs(TARGETS[1], 1, path=path)
    assert any("ignoring the call-cost cache" in str(w.message) for w in caught)
    assert json.loads(path.read_text())["costs"][c.key]["batch"] == 1  # rewritten whole


@pytest.mark.parametrize("schedule", ["", "eagle:1,speculative:2,lookup:1,tree:1,ar:1"])
def test_auto_rows_joining_a_running_batch_in_the_engine_equal_the_oracle(schedule):
    """The serving engine runs ``auto`` as one group: rows join (``Auto.join``: every candidate's
    own state too) and leave while it switches; each row is the oracle's."""
    from paragen.request import check_request
    from paragen.serve.engine import Engine, Entry

    model, heads = TARGETS[0], HEADS[(0, "eagle")]
    prompts = [[0, 1, 2, 0, 1], [3, 2], [1, 1, 1, 1, 1, 1, 1], [2, 3, 1], [0]]
    budgets = [12, 5, 9, 14, 7]
    runs = []
    for p, n in zip(prompts, budgets):
        events: list = []
        request = check_request(model, [p], "auto", n, 0.0, None, None, None, None, DRAFT_MODEL, heads,
                                {"schedule": schedule} if schedule else {})
        runs.append((Entry(request, lambda kind, value, ev=events: ev.append((kind, value))), events))
    engine = Engine(model, max_batch=4)
    arrivals = {0: [runs[0][0], runs[1][0]], 1: [runs[2][0]], 3: [runs[3][0]], 4: [runs[4][0]]}
    for step in range(500):
        for entry in arrivals.get(step, []):
            engine.add(entry)
        if engine.idle and step > 4:
            break
        engine.step()
    for (_, events), p, n in zip(runs, prompts, budgets):
        kind, gen = events[-1]
        assert kind == "done" and gen.tokens == reference_greedy(model, p, n), (p, n)


def test_a_later_generation_starts_from_what_an_earlier_one_learnt():
    """A second controller at the same costs probes nothing: it starts from the first one's record."""
    costs = synthetic_costs()
    first = Controller(["ar", "tree", "eagle"], costs, AutoOptions())
    simulate(first, {"ar": lambda i: 1.0, "tree": lambda i: 2.0, "eagle": lambda i: 3.0}, 40)
    second = Controller(["ar", "tree", "eagle"], costs, AutoOptions())
    assert second.choose() == "eagle"
