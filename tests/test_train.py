"""LM training: loss goes down, resume is exact, the record is written, shipped models load."""

from __future__ import annotations

import json

import pytest
import torch

import paragen
from paragen.models.io import builtin_models, load_native
from paragen.train.corpus import find_corpus, is_heldout
from paragen.train.lm import TrainConfig, train_lm

TINY = dict(size="tiny", max_files=30, seq_len=64, batch_size=8, vocab_size=300, precision="fp32", warmup=4,
            eval_every=20, checkpoint_every=10, eval_windows=16)


def test_corpus_split_is_deterministic_by_path():
    corpus = find_corpus()
    assert corpus.heldout_files and corpus.train_files
    assert all(is_heldout(f) for f in corpus.heldout_files)
    assert not any(is_heldout(f) for f in corpus.train_files)
    share = len(corpus.heldout_files) / (len(corpus.heldout_files) + len(corpus.train_files))
    assert 0.02 < share < 0.09


def test_tiny_training_lowers_heldout_loss(tmp_path):
    rec = train_lm(TrainConfig(out=str(tmp_path / "m"), steps=60, **TINY), progress=False)
    losses = [h["heldout_loss"] for h in rec["history"]]
    assert losses[-1] < losses[0] - 0.3
    saved = json.loads((tmp_path / "m" / "training.json").read_text())
    for key in ("command", "seed", "tokens_seen", "heldout_loss", "heldout_accuracy", "wall_seconds", "machine"):
        assert key in saved
    model = paragen.load(tmp_path / "m")
    assert model.tokenizer.mask_id is not None and model.info.eos_ids == (model.tokenizer.eos_id,)


def test_resume_continues_to_the_same_result(tmp_path):
    straight = train_lm(TrainConfig(out=str(tmp_path / "a"), steps=20, **TINY), progress=False)
    # "interrupted" after 10 of 20 steps (warm-up short, so the cosine schedule is exercised)
    train_lm(TrainConfig(out=str(tmp_path / "b"), steps=20, **TINY), progress=False, stop_at=10)
    resumed = train_lm(TrainConfig(out=str(tmp_path / "b"), steps=20, **TINY), resume=True, progress=False)
    assert resumed["steps"] == straight["steps"] == 20
    a, b = load_native(tmp_path / "a"), load_native(tmp_path / "b")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert resumed["heldout_loss"] == straight["heldout_loss"]
    assert resumed["history"] == straight["history"]


@pytest.mark.parametrize("name", ["code-target", "code-draft"])
def test_transformers_loads_shipped_models(name):
    if name not in builtin_models():
        pytest.fail(f"built-in model {name} is not shipped")
    from transformers import AutoModelForCausalLM

    path = builtin_models()[name]
    native = paragen.load(name)
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()
    ids = native.tokenizer.encode("def fibonacci(n):\n    if n < 2:\n        return n\n")
    with torch.inference_mode():
        ref = hf(torch.tensor([ids])).logits[0]
        ours = native(torch.tensor([ids]), torch.arange(len(ids))[None])[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
