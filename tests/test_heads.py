"""Prediction heads: modules, save/load and target refusal, training, and the strategies on them.

Oracle: every lossless mode equals the no-cache greedy decoder token for token in float64
on random tiny models with random heads (wrong most of the time: the output must still be
exact). Distribution tests for the lossless sampling modes; the relaxed (lossy) modes'
acceptance pinned on a hand-made case and flagged lossy.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import paragen
from paragen.errors import HeadsMismatchError, InvalidInputError, ModelLoadError, UnsupportedOptionError
from paragen.heads import KINDS, load_heads, new_heads, save_heads
from paragen.reference import reference_greedy
from tests.helpers import OracleHeads, tiny_model

TARGET, OTHER = tiny_model(0), tiny_model(1)


def random_heads(kind: str, model=TARGET, num_heads: int = 4, seed: int = 0):
    """Heads with random (not zeroed) residual branches: confident and mostly wrong."""
    return new_heads(model, kind, num_heads, seed=seed, std=0.3, zero_out=False)


@pytest.mark.parametrize("kind", KINDS)
def test_heads_save_load_round_trip_and_refuse_another_target(tmp_path, kind):
    heads = random_heads(kind)
    x = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        _, hidden = TARGET(x, torch.arange(9).expand(2, -1), return_hidden=True)
        want = heads.train_logits(hidden, x)
    assert want.shape == (2, 9, 1 if kind == "eagle" else 4, 50)
    path = save_heads(heads, tmp_path / kind, dtype=torch.float64)
    assert sorted(p.name for p in path.iterdir()) == ["heads.json", "heads.safetensors"]
    loaded = load_heads(path, TARGET)
    with torch.inference_mode():
        assert torch.equal(loaded.train_logits(hidden, x), want)
    # the target's own tensors are shared, not saved
    assert not {"embed", "proj"} & set(loaded.state_dict())
    with pytest.raises(HeadsMismatchError, match="trained for"):
        load_heads(path, OTHER)
    with pytest.raises(HeadsMismatchError, match="vocab 50, hidden 32"):
        load_heads(path, tiny_model(0, vocab=60))


def test_the_fingerprint_survives_a_change_of_dtype(tmp_path):
    path = save_heads(random_heads("medusa"), tmp_path / "h")
    assert load_heads(path, tiny_model(0).to(torch.bfloat16)).proj.dtype == torch.bfloat16


def test_a_missing_or_corrupt_heads_directory_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no heads.json"):
        load_heads(tmp_path, TARGET)
    path = save_heads(random_heads("blockwise"), tmp_path / "h")
    (path / "heads.safetensors").write_bytes(b"broken")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_heads(path, TARGET)


def test_zero_initialised_heads_start_as_the_targets_next_token():
    """Medusa's initialisation: a zeroed residual branch reads out the target's own logits."""
    x = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits, hidden = TARGET(x, torch.arange(6)[None], return_hidden=True)
        for kind in ("blockwise", "medusa", "hydra"):
            out = new_heads(TARGET, kind, 3, std=0.3).train_logits(hidden, x)
            for j in range(3):
                torch.testing.assert_close(out[:, :, j], logits, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- training

TINY = dict(max_files=20, seq_len=48, batch_size=8, precision="fp32", warmup=4, eval_every=5, checkpoint_every=10,
            eval_windows=8, lr=3e-3)


@pytest.mark.slow
@pytest.mark.parametrize("kind,fraction", [(kind, 1.0) for kind in KINDS] + [("blockwise", 0.25)])
def test_tiny_training_lowers_heldout_head_loss(tmp_path, model_dir, kind, fraction):
    from paragen.train.heads import HeadsTrainConfig, train_heads

    rec = train_heads(HeadsTrainConfig(kind=kind, target=str(model_dir), out=str(tmp_path / "h"), num_heads=2,
                                       steps=45, readout_fraction=fraction, **TINY), progress=False)
    losses = [h["heldout_loss"] for h in rec["history"]]
    assert losses[-1] < losses[0] - 0.05, losses
    assert len(rec["per_head_accuracy"]) == (1 if kind == "eagle" else 2)
    saved = json.loads((tmp_path / "h" / "training.json").read_text())
    assert saved["target"] == str(model_dir) and saved["per_head_accuracy"] == rec["per_head_accuracy"]
    target = paragen.load(model_dir)
    assert load_heads(tmp_path / "h", target).kind == kind


# eagle draws feature noise from the checkpointed generator; a readout fraction draws positions from it
@pytest.mark.slow
@pytest.mark.parametrize("kind,fraction", [("hydra", 1.0), ("eagle", 1.0), ("medusa", 0.3)])
def test_heads_training_resumes_to_the_same_result(tmp_path, model_dir, kind, fraction):
    from paragen.train.heads import HeadsTrainConfig, train_heads

    def cfg(name):
        return HeadsTrainConfig(kind=kind, target=str(model_dir), out=str(tmp_path / name), num_heads=2, steps=20,
                                readout_fraction=fraction, **TINY)

    straight = train_heads(cfg("a"), progress=False)
    train_heads(cfg("b"), progress=False, stop_at=10)
    resumed = train_heads(cfg("b"), resume=True, progress=False)
    assert resumed["steps"] == straight["steps"] == 20
    target = paragen.load(model_dir)
    a, b = load_heads(tmp_path / "a", target), load_heads(tmp_path / "b", target)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert resumed["history"] == straight["history"]


def test_training_labels_are_the_targets_own_tokens_j_plus_2_ahead():
    """Pins the alignment decoding relies on: head j at position t is scored against the
    target's prediction at t + j + 1 (the token at t + j + 2). Heads that answer exactly
    that are 100% right; the same heads one position off are not."""
    from paragen.train.heads import HeadsTrainConfig, head_loss

    class Shifted(torch.nn.Module):
        kind, num_heads = "medusa", 3

        def __init__(self, shift: int):
            super().__init__()
            self.shift = shift

        def readout(self, x):  # its "features" are already the target's logits
            return x

        def train_features(self, hidden, tokens):
            with torch.no_grad():
                logits = TARGET(tokens, torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1))
            pad = torch.cat([logits, logits[:, :4]], dim=1)  # the tail is never scored
            return torch.stack([pad[:, j + self.shift : j + self.shift + tokens.shape[1]] for j in range(3)], dim=2)

    batch = torch.randint(0, 50, (2, 21), generator=torch.Generator().manual_seed(0))
    cfg = HeadsTrainConfig(precision="fp32")
    _, correct, count = head_loss(Shifted(1), TARGET, batch, cfg)
    assert correct == count == [2 * 19, 2 * 18, 2 * 17]
    _, correct, count = head_loss(Shifted(0), TARGET, batch, cfg)
    assert all(c < n / 2 for c, n in zip(correct, count))


@pytest.mark.slow
def test_init_continues_heads_on_a_continued_target(tmp_path, model_dir, tokenizer):
    """``--init``: heads trained for one target start training on another of the same shape
    (as after ``train lm --init``) from their own weights, re-bound to the new target, and
    begin far ahead of fresh heads; another kind or number of heads is refused."""
    from paragen.models.io import load_native, save_model
    from paragen.train.heads import HeadsTrainConfig, start_heads, train_heads

    cfg = dict(kind="hydra", num_heads=2, precision="fp32", **{k: v for k, v in TINY.items() if k != "precision"})
    train_heads(HeadsTrainConfig(target=str(model_dir), out=str(tmp_path / "old"), steps=45, **cfg), progress=False)
    continued = load_native(model_dir)
    with torch.no_grad():  # a target trained a little further: every weight moved by about 1%
        for p in continued.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.01 * p.std())
    new_dir = save_model(continued, tokenizer, tmp_path / "continued", dtype=torch.float32)
    new_target = paragen.load(new_dir)
    with pytest.raises(HeadsMismatchError):
        load_heads(tmp_path / "old", new_target)  # the old heads refuse the new target...
    warm = start_heads(HeadsTrainConfig(target=str(new_dir), init=str(tmp_path / "old"), **cfg), new_target)
    old = load_heads(tmp_path / "old", paragen.load(model_dir))
    for (name, a), (_, b) in zip(warm.state_dict().items(), old.state_dict().items()):
        assert torch.equal(a, b), name  # ...but start the new run with their weights
    fresh = train_heads(HeadsTrainConfig(target=str(new_dir), out=str(tmp_path / "fresh"), steps=5, **cfg), progress=False)
    cont = train_heads(HeadsTrainConfig(target=str(new_dir), out=str(tmp_path / "cont"), init=str(tmp_path / "old"),
                                        steps=5, **cfg), progress=False)
    assert cont["heldout_loss"] < fresh["heldout_loss"] - 0.05, (cont["heldout_loss"], fresh["heldout_loss"])
    assert load_heads(tmp_path / "cont", new_target).kind == "hydra"  # bound to the new target now
    with pytest.raises(HeadsMismatchError):
        load_heads(tmp_path / "cont", paragen.load(model_dir))
    for other in (dict(cfg, kind="medusa"), dict(cfg, num_heads=3)):
        with pytest.raises(InvalidInputError, match="--num-heads"):
            start_heads(HeadsTrainConfig(target=str(new_dir), init=str(tmp_path / "old"), **other), new_target)


@pytest.mark.slow
def test_train_heads_command(tmp_path, model_dir, capsys):
    from paragen.cli import main

    out = tmp_path / "h"
    rc = main(["train", "heads", "--kind", "medusa", "--target", str(model_dir), "--out", str(out), "--num-heads", "2",
               "--steps", "2", "--max-files", "10", "--seq-len", "32", "--batch-size", "2", "--eval-windows", "2",
               "--precision", "fp32", "--quiet", "--threads", "1", "--device", "cpu"])
    assert rc == 0 and "top-1 agreement with the target per head" in capsys.readouterr().out
    record = json.loads((out / "training.json").read_text())
    assert record["command"].startswith("paragen ") and record["steps"] == 2  # (the process argv: pytest here)
    assert load_heads(out, paragen.load(model_dir)).num_heads == 2


# ---------------------------------------------------------------- strategies: the oracle


class OracleEagle(torch.nn.Module):
    """Test double for the eagle drafter: its "feature" of position p holds p, read out as the
    target's greedy token after p (wrong where ``wrong`` says): a perfect or partly wrong drafter."""

    kind, num_heads = "eagle", 1

    def __init__(self, target, prompt: list[int], n: int, wrong: float = 0.0, seed: int = 0):
        super().__init__()
        self.embed, self.proj = target.head_weights()
        self.future = prompt + reference_greedy(target, prompt, n + 12)
        self.wrong = torch.rand(len(self.future) + 16, generator=torch.Generator().manual_seed(seed)) < wrong

    def new_cache(self, max_length: int):
        from paragen.cache import KVCache

        return KVCache(1, 1, 1, 1, max_length, torch.float64)

    def forward(self, features, tokens, positions, cache=None, mask=None):
        out = torch.zeros(*tokens.shape, self.proj.shape[1], dtype=torch.float64)
        out[..., 0] = positions + 1  # the feature of the next position
        return out

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        pos = x[..., 0].round().long().reshape(-1)
        out = torch.zeros(len(pos), self.proj.shape[0], dtype=torch.float64)
        for i, p in enumerate(pos.tolist()):
            t = self.future[p + 1] if p + 1 < len(self.future) else 0
            out[i, (t + 1) % out.shape[1] if self.wrong[p] else t] = 10.0
        return out.reshape(*x.shape[:-1], -1)


LOSSLESS = [
    ("blockwise", "blockwise", {}), ("blockwise", "medusa", {"k": 2}), ("blockwise", "blockwise", {"k": 1}),
    ("medusa", "medusa", {}), ("medusa", "blockwise", {"widths": "1,1,1,1"}), ("medusa", "medusa", {"widths": "3,1,2"}),
    ("hydra", "hydra", {}), ("hydra", "hydra", {"widths": "1,1,1"}), ("hydra", "hydra", {"widths": "2,3"}),
    ("eagle", "eagle", {}), ("eagle", "eagle", {"budget": 5, "depth": 3, "topk": 2}),
    ("eagle", "eagle", {"shape": "static", "widths": "2,2,1"}), ("eagle", "eagle", {"shape": "static", "widths": "1,1,1,1"}),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.lists(st.integers(0, 49), min_size=1, max_size=16), n=st.integers(1, 30),
       case=st.sampled_from(LOSSLESS), seed=st.integers(0, 9), zero_out=st.booleans())
def test_lossless_modes_with_random_heads_equal_the_oracle(prompt, n, case, seed, zero_out):
    name, kind, options = case
    heads = new_heads(TARGET, kind, 4, seed=seed, std=0.3, zero_out=zero_out)
    out = paragen.generate(TARGET, prompt, name, max_new_tokens=n, heads=heads, **options)
    assert out.tokens == reference_greedy(TARGET, prompt, n)
    assert out.stats.extra.get("lossy", False) is False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.lists(st.integers(0, 49), min_size=1, max_size=16), n=st.integers(1, 30),
       case=st.sampled_from(LOSSLESS), wrong=st.sampled_from([0.0, 0.3, 0.7, 1.0]), seed=st.integers(0, 9))
@example(prompt=[0, 0, 0], n=2, case=("blockwise", "blockwise", {}), wrong=0.0, seed=0)  # equal states: skipped
def test_lossless_modes_with_partly_right_heads_equal_the_oracle(prompt, n, case, wrong, seed):
    """Heads right at a given rate exercise every accept length; perfect heads accept everything."""
    name, kind, options = case
    if kind == "eagle":
        heads = OracleEagle(TARGET, prompt, n, wrong, seed)
    else:
        heads = OracleHeads(TARGET, prompt, n, kind, wrong=wrong, seed=seed)
        assume(heads.unambiguous)
    out = paragen.generate(TARGET, prompt, name, max_new_tokens=n, heads=heads, **options)
    assert out.tokens == reference_greedy(TARGET, prompt, n)
    if wrong == 0.0:
        assert out.stats.extra["accepted"] == out.stats.extra["proposed"]
    if wrong == 1.0 and name == "blockwise":  # (in a tree, a wrong top-1's siblings may hold the right token)
        assert sum(out.stats.extra["accepted"]) == 0


def test_perfect_heads_give_a_block_per_call():
    prompt, n = [3, 1, 4, 1, 5], 40
    for name, kind, calls in [("blockwise", "blockwise", 8), ("medusa", "medusa", 8), ("hydra", "hydra", 8),
                              ("eagle", "eagle", 8)]:
        heads = OracleEagle(TARGET, prompt, n) if kind == "eagle" else OracleHeads(TARGET, prompt, n, kind)
        options = {"shape": "static", "widths": "2,1,1,1"} if kind == "eagle" else {}
        out = paragen.generate(TARGET, prompt, name, max_new_tokens=n, heads=heads, **options)
        assert out.tokens == reference_greedy(TARGET, prompt, n)
        assert out.stats.target_calls == calls  # 5 tokens per call (4 heads + the target's own)


@pytest.mark.slow
def test_builtin_target_with_heads_equals_oracle():
    """code-target (float64), a HumanEval prompt, untrained heads (Medusa's initialisation),
    partly right ones and the shipped trained heads (loaded by default): the oracle holds on a
    real model too, and the trained heads do get drafts accepted."""
    from paragen.heads import builtin_heads
    from paragen.tasks import humaneval

    target = paragen.load("code-target", dtype=torch.float64)
    shipped = builtin_heads()
    assert {f"code-target-{kind}" for kind in KINDS} <= set(shipped), shipped
    for task in humaneval()[:1]:
        ids = target.tokenizer.encode(task.prompt)
        expected = reference_greedy(target, ids, 32)
        for name, kind in [("blockwise", "blockwise"), ("medusa", "medusa"), ("hydra", "hydra"), ("eagle", "eagle")]:
            fresh = new_heads(target, kind, 1 if kind == "eagle" else 3)
            right = OracleEagle(target, ids, 32, 0.3) if kind == "eagle" else OracleHeads(target, ids, 32, kind, 3, 0.3)
            for heads in (fresh, right):
                out = paragen.generate(target, ids, name, max_new_tokens=32, heads=heads)
                assert out.tokens == expected, (task.id, name, type(heads).__name__)
            assert sum(out.stats.extra["accepted"]) > 0
            out = paragen.generate(target, ids, name, max_new_tokens=32)  # the shipped heads
            assert out.tokens == expected, (task.id, name, "shipped")
            assert sum(out.stats.extra["accepted"]) > 0, name


@pytest.mark.slow
def test_builtin_heads_by_name_and_by_default():
    from paragen.heads import builtin_heads_for, default_heads

    target = paragen.load("code-target")
    assert builtin_heads_for("code-target", ("medusa",)) == "code-target-medusa"
    assert builtin_heads_for("code-draft", ("medusa",)) is None
    heads = paragen.load_heads("code-target-eagle", target)
    assert heads.kind == "eagle" and heads.proj.data_ptr() == target.head_weights()[1].data_ptr()
    assert default_heads(target, ("hydra",)).kind == "hydra"
    assert default_heads(target, ("hydra",)) is default_heads(target, ("hydra",))  # loaded once per model
    wide = default_heads(target.double(), ("hydra",))  # a cast rebinds them to the new weights
    assert wide.proj.dtype == torch.float64 and wide.proj.data_ptr() == target.head_weights()[1].data_ptr()
    assert default_heads(TARGET, ("hydra",)) is None  # not a built-in model: nothing by default
    with pytest.raises(HeadsMismatchError, match="trained for code-target"):
        paragen.load_heads("code-target-medusa", paragen.load("code-draft"))


def test_heads_on_the_hf_backend(model_dir):
    native = paragen.load(model_dir, dtype=torch.float64)
    hf = paragen.load(model_dir, backend="hf", dtype=torch.float64)
    expected = paragen.generate(native, "def add(a, b):", "ar", max_new_tokens=24).tokens
    for name, kind in [("blockwise", "blockwise"), ("medusa", "medusa"), ("hydra", "hydra"), ("eagle", "eagle")]:
        heads = new_heads(hf, kind, 3, std=0.3)
        assert paragen.generate(hf, "def add(a, b):", name, max_new_tokens=24, heads=heads).tokens == expected


@pytest.mark.parametrize("options", [{}, {"shape": "static", "widths": "2,2,2"}])
def test_eagle_feeds_the_drafter_the_targets_true_features(options):
    """Every committed position's entry in the drafter's cache is (h_t, x_{t+1}) with the
    target's own h_t, fed once, in order: what the drafter was trained on. A partly right
    drafter makes accepted paths run through every branch of the tree."""
    fed = []

    class Spy(OracleEagle):
        def forward(self, features, tokens, positions, cache=None, mask=None):
            if mask is None:  # catch-up entries (tree levels pass their masks)
                fed.extend(zip(features[0], tokens[0].tolist(), positions[0].tolist()))
            return super().forward(features, tokens, positions, cache, mask)

    prompt, n = [5, 9, 2, 7], 40
    out = paragen.generate(TARGET, prompt, "eagle", max_new_tokens=n, heads=Spy(TARGET, prompt, n, 0.4, 2), **options)
    seq = prompt + out.tokens
    assert out.tokens == reference_greedy(TARGET, prompt, n) and sum(out.stats.extra["accepted"][1:]) > 3
    with torch.inference_mode():
        _, hidden = TARGET(torch.tensor([seq]), torch.arange(len(seq))[None], return_hidden=True)
    assert [p for _, _, p in fed] == list(range(len(fed))) and len(fed) >= len(seq) - 2 - 5
    for feature, token, p in fed:
        assert token == seq[p + 1]
        torch.testing.assert_close(feature, hidden[0, p], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- strategies: sampling


@pytest.mark.slow
@pytest.mark.parametrize("name,kind,options", [
    ("blockwise", "blockwise", {}),
    ("medusa", "medusa", {"widths": "2,2"}),
    ("medusa", "medusa", {"widths": "3,2", "draw": "sample"}),
    ("hydra", "hydra", {"widths": "2,2"}),
    ("hydra", "hydra", {"widths": "2,1", "draw": "sample"}),
    ("eagle", "eagle", {"budget": 4, "depth": 2, "topk": 2}),
    ("eagle", "eagle", {"shape": "static", "widths": "2,2", "draw": "without"}),
])
def test_sampled_sequences_follow_the_target_distribution(name, kind, options):
    """Sequences of three tokens (every depth drafted, the bonus token included) against the
    exact distribution under the warped target; see tests/helpers.py for the bound."""
    from tests.helpers import PROMPT, exact_sequence_distribution, tv, tv_bound
    from tests.helpers import TARGET as SMALL

    params = paragen.sampling.SamplingParams(0.9, top_p=0.95)
    heads = new_heads(SMALL, kind, 2, seed=3, std=0.5, zero_out=False)
    length, n = 3, 4000
    exact = exact_sequence_distribution(SMALL, PROMPT, length, params)
    counts: Counter = Counter()
    accepted = proposed = 0
    for i in range(n):
        out = paragen.generate(SMALL, PROMPT, name, max_new_tokens=length, temperature=params.temperature,
                               top_p=params.top_p, seed=i, heads=heads, **options)
        counts[tuple(out.tokens)] += 1
        accepted += sum(out.stats.extra["accepted"])
        proposed += sum(out.stats.extra["proposed"])
    assert tv(counts, exact, n) < tv_bound(len(exact), n)
    assert 0 < accepted < proposed  # drafts were both accepted and rejected


# ---------------------------------------------------------------- relaxed (lossy) acceptance


def test_relaxed_acceptance_rules_on_a_hand_made_case():
    from paragen.verify import relaxed_accept

    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0],  # draft 1 is 2nd: in the top 2, 1 nat from the best
                           [0.0, 1.0, 5.0, 4.0],  # draft 2 is the argmax
                           [1.0, 0.0, 3.0, 2.0],  # draft 0 is 3rd: two tokens rank above it
                           [0.0, 0.0, 0.0, 9.0]])
    draft = [1, 2, 0]
    assert relaxed_accept(draft, logits, "top_m", m=1) == (0, 0)  # m = 1: greedy acceptance
    assert relaxed_accept(draft, logits, "top_m", m=2) == (2, 2)  # stops at the 3rd-ranked proposal
    assert relaxed_accept(draft, logits, "top_m", m=3) == (3, 3)  # everything, then the target's bonus
    assert relaxed_accept(draft, logits, "distance", eps=0.5) == (0, 0)
    assert relaxed_accept(draft, logits, "distance", eps=1.5) == (2, 2)  # row 0: 1 nat; row 2: 2 nats > 1.5
    assert relaxed_accept(draft, logits, "distance", eps=2.5) == (3, 3)


def test_relaxed_output_is_flagged_lossy_and_never_counted_as_exact():
    from paragen.strategies import STRATEGIES

    cls = STRATEGIES["blockwise_relaxed"]
    assert cls.lossless is False and STRATEGIES["blockwise"].lossless is True
    prompt, n = [3, 1, 4, 1, 5], 40
    heads = OracleHeads(TARGET, prompt, n, "blockwise", wrong=0.5, seed=1)
    # m = V accepts any proposal: zero-initialised heads propose the target's next token again
    out = paragen.generate(TARGET, prompt, "blockwise_relaxed", max_new_tokens=n, heads=new_heads(TARGET, "medusa", 4),
                           m=50)
    assert out.stats.extra["lossy"] is True and out.stats.extra["acceptance"] == "top_m=50"
    assert all(a == p for a, p in zip(out.stats.extra["accepted"], out.stats.extra["proposed"]))  # m = V: all taken
    assert out.tokens != reference_greedy(TARGET, prompt, n)
    exact = paragen.generate(TARGET, prompt, "blockwise_relaxed", max_new_tokens=n, heads=heads, m=1)
    assert exact.tokens == reference_greedy(TARGET, prompt, n) and exact.stats.extra["lossy"] is True
    with pytest.raises(UnsupportedOptionError, match="greedy-only"):
        paragen.generate(TARGET, prompt, "blockwise_relaxed", max_new_tokens=4, heads=heads, temperature=1.0)


def test_typical_acceptance_on_a_hand_made_tree():
    """Threshold min(epsilon, delta e^-H): at the root H = 1.142 (e^-H = .319), at node a
    H = .967 (e^-H = .380)."""
    from paragen.sampling import SamplingParams
    from paragen.tree import TokenTree
    from paragen.verify import typical_accept_tree

    tree = TokenTree(0)
    a = tree.add(0, 1)
    tree.add(0, 2)
    c = tree.add(a, 0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05],
                      [0.05, 0.05, 0.6, 0.3],
                      [0.25, 0.25, 0.25, 0.25],
                      [0.1, 0.6, 0.2, 0.1]], dtype=torch.float64)
    greedy = SamplingParams(0.0)
    # defaults (.09, .3): root bar .09, tokens 1 (.3) and 2 (.15) pass, the likelier is taken; at a the
    # bar is .09 and token 0 (.05) fails: the target's argmax there (2) follows
    assert typical_accept_tree(tree, p.log(), greedy, None) == ([a], 2)
    # delta .1: bars .0319 and .0380: token 0 passes at a too; the argmax at c (1) follows
    assert typical_accept_tree(tree, p.log(), greedy, None, delta=0.1) == ([a, c], 1)
    # epsilon .35, delta 4: the root's bar is .35, above both children
    assert typical_accept_tree(tree, p.log(), greedy, None, epsilon=0.35, delta=4.0) == ([], 0)


def test_typical_acceptance_takes_the_longest_typical_prefix_of_any_branch():
    """Medusa's rule on the issue's tree: node a (token 1) is likelier at the root, but its
    child fails the test, while node b (token 2) has a typical child: [b, its child] is the
    longest typical prefix, and the target's argmax after it follows."""
    from paragen.sampling import SamplingParams
    from paragen.tree import TokenTree
    from paragen.verify import typical_accept_tree

    tree = TokenTree(0)
    a = tree.add(0, 1)
    b = tree.add(0, 2)
    tree.add(a, 0)
    d = tree.add(b, 1)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05],
                      [0.05, 0.05, 0.6, 0.3],
                      [0.1, 0.6, 0.2, 0.1],
                      [0.25, 0.25, 0.25, 0.25],
                      [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    assert typical_accept_tree(tree, p.log(), SamplingParams(0.0), None) == ([b, d], 3)


def brute_force_typical(tree, p: torch.Tensor, epsilon: float, delta: float) -> list[int]:
    """Medusa's evaluate_posterior by enumeration: over every root path, the longest prefix whose
    tokens all pass p > min(epsilon, delta e^-H); ties by the highest product of p."""
    H = -(p * p.log()).sum(-1)
    bar = torch.minimum(torch.full_like(H, epsilon), delta * torch.exp(-H))
    best, best_key = [], (0, 0.0)
    for leaf in range(1, len(tree)):
        prefix, loglik = [], 0.0
        for node in tree.path(leaf):
            parent = tree.parents[node]
            if not p[parent, tree.tokens[node]] > bar[parent]:
                break
            prefix.append(node)
            loglik += math.log(p[parent, tree.tokens[node]])
            key = (len(prefix), loglik)
            if key > best_key:
                best, best_key = list(prefix), key
    return best


@pytest.mark.parametrize("seed", range(40))
def test_typical_acceptance_equals_a_brute_force_search_over_root_paths(seed):
    from paragen.sampling import SamplingParams
    from paragen.tree import TokenTree
    from paragen.verify import typical_accept_tree

    g = torch.Generator().manual_seed(seed)
    V = 5
    tree = TokenTree(0)
    for _ in range(int(torch.randint(2, 14, (1,), generator=g))):
        parent = int(torch.randint(0, len(tree), (1,), generator=g))
        tree.add(parent, int(torch.randint(0, V, (1,), generator=g)))
    p = torch.softmax(torch.randn(len(tree), V, generator=g, dtype=torch.float64) * 2, -1)
    path, y = typical_accept_tree(tree, p.log(), SamplingParams(0.0), None, epsilon=0.2, delta=0.5)
    assert path == brute_force_typical(tree, p, 0.2, 0.5)
    assert y == int(p[path[-1] if path else 0].argmax())


def test_typical_acceptance_is_flagged_lossy():
    from paragen.strategies import STRATEGIES

    assert STRATEGIES["medusa_typical"].lossless is False and STRATEGIES["medusa"].lossless is True
    heads = new_heads(TARGET, "medusa", 4)
    prompt, n = [3, 1, 4, 1, 5], 40
    out = paragen.generate(TARGET, prompt, "medusa_typical", max_new_tokens=n, heads=heads, epsilon=0.0, delta=0.0)
    assert out.stats.extra["lossy"] is True and out.stats.extra["acceptance"].startswith("typical")
    assert out.tokens != reference_greedy(TARGET, prompt, n)  # a zero threshold keeps every drafted token
    sampled = paragen.generate(TARGET, prompt, "medusa_typical", max_new_tokens=n, heads=heads, temperature=1.0, seed=0)
    assert sampled.stats.extra["lossy"] is True and len(sampled.tokens) == n


# ---------------------------------------------------------------- API boundary


def test_heads_are_required_checked_and_refused_clearly():
    heads = new_heads(TARGET, "medusa", 2)
    with pytest.raises(HeadsMismatchError, match="needs prediction heads"):
        paragen.generate(TARGET, [1, 2], "medusa", max_new_tokens=4)
    with pytest.raises(UnsupportedOptionError, match="uses no prediction heads"):
        paragen.generate(TARGET, [1, 2], "ar", max_new_tokens=4, heads=heads)
    with pytest.raises(HeadsMismatchError, match="runs on hydra heads, not medusa"):
        paragen.generate(TARGET, [1, 2], "hydra", max_new_tokens=4, heads=heads)
    with pytest.raises(HeadsMismatchError, match="bound to another model"):
        paragen.generate(OTHER, [1, 2], "medusa", max_new_tokens=4, heads=heads)
    with pytest.raises(HeadsMismatchError, match="k=3 but the heads have 2"):
        paragen.generate(TARGET, [1, 2], "blockwise", max_new_tokens=4, heads=heads, k=3)
    for name, options in [("blockwise", {"k": -1}), ("medusa", {"widths": "2,0"}), ("medusa", {"draw": "some"}),
                          ("blockwise_relaxed", {"accept": "near"}), ("blockwise_relaxed", {"m": 0})]:
        with pytest.raises(UnsupportedOptionError):
            paragen.generate(TARGET, [1, 2], name, max_new_tokens=4, heads=heads, **options)


def test_bench_runs_heads_strategies_on_the_builtin_heads(model_dir):
    from paragen.bench.run import BenchConfig, build_contenders

    names = [c.name for c in build_contenders(BenchConfig(strategies=("medusa", "eagle@small"), model="code-target"))]
    assert names == ["ar", "medusa", "eagle@small"]
    with pytest.raises(InvalidInputError, match="none are built in for --model"):
        build_contenders(BenchConfig(strategies=("medusa",), model=str(model_dir)))


def test_heads_count_their_drafting_calls():
    """Heads and the eagle drafter count their calls as a model counts its forwards (what a decode
    reads as draft calls): medusa's heads once per drafting step, eagle's drafter at least once."""
    for kind, name in (("medusa", "medusa"), ("hydra", "hydra"), ("eagle", "eagle")):
        heads = random_heads(kind)
        out = paragen.generate(TARGET, [3, 1, 4, 1, 5], name, max_new_tokens=12, heads=heads)
        steps = out.stats.target_calls
        if kind == "medusa":
            assert 0 < heads.calls <= steps  # one call per step that drafted (a last one-token step drafts nothing)
        else:
            assert heads.calls >= steps - 1, (kind, heads.calls, steps)  # per level (hydra), per start and level (eagle)
