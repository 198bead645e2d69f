"""Prediction heads: modules, save/load and target refusal, training, and the strategies on them.

Oracle: every lossless mode equals the no-cache greedy decoder token for token in float64
on random tiny models with random heads (wrong most of the time: the output must still be
exact). Distribution tests for the lossless sampling modes; the relaxed (lossy) modes'
acceptance pinned on a hand-made case and flagged lossy.
"""

from __future__ import annotations

import json

import pytest
import torch

import paragen
from paragen.errors import HeadsMismatchError, ModelLoadError
from paragen.heads import KINDS, load_heads, new_heads, save_heads
from tests.conftest import tiny_model

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


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_training_lowers_heldout_head_loss(tmp_path, model_dir, kind):
    from paragen.train.heads import HeadsTrainConfig, train_heads

    rec = train_heads(HeadsTrainConfig(kind=kind, target=str(model_dir), out=str(tmp_path / "h"), num_heads=2,
                                       steps=45, **TINY), progress=False)
    losses = [h["heldout_loss"] for h in rec["history"]]
    assert losses[-1] < losses[0] - 0.05, losses
    assert len(rec["per_head_accuracy"]) == (1 if kind == "eagle" else 2)
    saved = json.loads((tmp_path / "h" / "training.json").read_text())
    assert saved["target"] == str(model_dir) and saved["per_head_accuracy"] == rec["per_head_accuracy"]
    target = paragen.load(model_dir)
    assert load_heads(tmp_path / "h", target).kind == kind


def test_heads_training_resumes_to_the_same_result(tmp_path, model_dir):
    from paragen.train.heads import HeadsTrainConfig, train_heads

    def cfg(name):
        return HeadsTrainConfig(kind="hydra", target=str(model_dir), out=str(tmp_path / name), num_heads=2, steps=20,
                                **TINY)

    straight = train_heads(cfg("a"), progress=False)
    train_heads(cfg("b"), progress=False, stop_at=10)
    resumed = train_heads(cfg("b"), resume=True, progress=False)
    assert resumed["steps"] == straight["steps"] == 20
    target = paragen.load(model_dir)
    a, b = load_heads(tmp_path / "a", target), load_heads(tmp_path / "b", target)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert resumed["history"] == straight["history"]
