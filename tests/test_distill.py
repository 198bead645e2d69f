"""Distillation (`paragen train distill`): the loss is the KL to the teacher, and training lowers it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import paragen
from paragen.models.io import load_native
from paragen.models.native import NativeModel
from paragen.train.distill import DistillConfig, distill_loss, distill_metrics, train_distill
from paragen.train.lm import TrainConfig, lm_loss, prepare, train_lm

pytestmark = pytest.mark.slow  # every test trains (the teacher fixture: 200 steps)

TINY = dict(size="tiny", max_files=30, seq_len=64, batch_size=8, precision="fp32", warmup=4, lr=3e-3,
            eval_every=20, checkpoint_every=20, eval_windows=16)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny teacher, briefly trained: a random one is a pseudo-random function of its context
    that no student of its size learns in a few steps; a trained one has structure to learn."""
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    # another seed and a higher rate than the students': not a copy of a student trained on the data alone
    train_lm(TrainConfig(out=str(out), steps=200, vocab_size=300, **{**TINY, "eval_every": 1000, "seed": 5, "lr": 1e-2,
                                                                      "warmup": 10}), progress=False)
    return out


def test_distill_loss_is_kl_and_ce_by_weight(teacher_dir):
    teacher = load_native(teacher_dir)
    batch = torch.randint(0, teacher.config.vocab_size, (2, 17))
    cfg = DistillConfig(**{**TINY, "temperature": 2.0})
    assert distill_loss(teacher, teacher, batch, cfg).item() == pytest.approx(0.0, abs=1e-6)  # KL(p || p) = 0
    student = NativeModel(teacher.config).init_weights(seed=1)
    assert distill_loss(student, teacher, batch, cfg).item() > 0.01
    ce_only = DistillConfig(**{**TINY, "ce_weight": 1.0})
    torch.testing.assert_close(distill_loss(student, teacher, batch, ce_only), lm_loss(student, batch, "fp32"))
    with pytest.raises(ValueError, match="ce_weight"):
        DistillConfig(ce_weight=1.5)


def test_distillation_lowers_the_kl_to_the_teacher(tmp_path, teacher_dir):
    cfg = DistillConfig(out=str(tmp_path / "d"), teacher=str(teacher_dir), steps=120, **TINY)
    teacher = load_native(teacher_dir)
    before = teacher.state_dict()
    rec = train_distill(cfg, progress=False)
    on_data = train_distill(replace(cfg, out=str(tmp_path / "ce"), ce_weight=1.0), progress=False)
    # the untrained student (same seed, same shape) on the same held-out windows
    fresh = NativeModel(load_native(tmp_path / "d").config).init_weights(cfg.seed)
    _, _, heldout, _ = prepare(DistillConfig(**{**TINY, "tokenizer": str(teacher_dir)}))
    start = distill_metrics(fresh, teacher, heldout, cfg)
    assert rec["heldout_kl"] < 0.2 * start["kl"]
    # and more than the same training on the data alone
    assert rec["heldout_kl"] < 0.85 * on_data["heldout_kl"], (rec["heldout_kl"], on_data["heldout_kl"])
    assert rec["heldout_agreement"] > on_data["heldout_agreement"], (rec["heldout_agreement"], on_data["heldout_agreement"])
    for name, p in load_native(teacher_dir).state_dict().items():  # the teacher is frozen
        assert torch.equal(p, before[name]), name
    saved = json.loads((tmp_path / "d" / "training.json").read_text())
    assert saved["teacher"] == str(teacher_dir) and saved["heldout_kl"] == rec["heldout_kl"]
    student = paragen.load(tmp_path / "d")
    assert student.tokenizer.fingerprint() == paragen.load(teacher_dir).tokenizer.fingerprint()


def test_init_starts_from_a_given_draft(tmp_path, teacher_dir):
    # a student initialised as the teacher itself starts (and stays, at a tiny rate) at KL ~ 0
    cfg = DistillConfig(out=str(tmp_path / "d"), teacher=str(teacher_dir), init=str(teacher_dir), steps=2,
                        **{**TINY, "lr": 1e-6, "warmup": 1})
    rec = train_distill(cfg, progress=False)
    assert rec["heldout_kl"] < 1e-3 and rec["heldout_agreement"] > 0.99


CONT = dict(prompts=6, min_prompt_tokens=8, max_prompt_tokens=24, new_tokens=8, batch_size=4, threads=1)


def test_continuations_are_the_teachers_greedy_output_on_training_prompts(tmp_path, teacher_dir):
    from paragen.train.continuations import RECORD, ContinuationsConfig, cut_prompts, write_continuations
    from paragen.train.corpus import find_corpus, is_heldout

    cfg = ContinuationsConfig(model=str(teacher_dir), out=str(tmp_path / "c"), **CONT)
    rec = write_continuations(cfg, progress=False)
    teacher = paragen.load(teacher_dir)
    corpus = find_corpus()
    prompts = cut_prompts(corpus, teacher.tokenizer, cfg)
    assert prompts == cut_prompts(corpus, teacher.tokenizer, cfg)  # the seed fixes them (what --resume relies on)
    assert len(prompts) == 6 and all(8 <= len(ids) <= 24 for _, ids in prompts)
    assert set(rec["sources"].values()) <= set(corpus.train_files)  # held-out files never give a prompt
    assert not any(is_heldout(src) for src in rec["sources"].values())
    written = 0
    for (name, src), (src2, ids) in zip(sorted(rec["sources"].items()), prompts):
        assert src == src2
        alone = paragen.generate(teacher, ids, strategy="ar", max_new_tokens=8)
        assert (tmp_path / "c" / name).read_text() == teacher.tokenizer.decode(ids) + alone.text
        written += len(alone.tokens)
    assert rec["new_tokens"] == written and json.loads((tmp_path / "c" / RECORD).read_text()) == rec
    assert not (tmp_path / ".c.work").exists()
    out = find_corpus(tmp_path / "c")  # a corpus for --data
    assert len(out.train_files) + len(out.heldout_files) == 6
    # a model trained on it records where its text came from
    _, _, _, split = prepare(TrainConfig(data=str(tmp_path / "c"), tokenizer=str(teacher_dir)))
    assert split["continuations"]["model"] == str(teacher_dir) and "sources" not in split["continuations"]


def test_continuations_resume_keeps_finished_batches_and_refuses_other_settings(tmp_path, teacher_dir, monkeypatch):
    import paragen.api
    from paragen.errors import InvalidInputError
    from paragen.train.continuations import ContinuationsConfig, write_continuations

    straight = write_continuations(ContinuationsConfig(model=str(teacher_dir), out=str(tmp_path / "a"), **CONT),
                                   progress=False)
    cfg = ContinuationsConfig(model=str(teacher_dir), out=str(tmp_path / "b"), **CONT)
    real, calls = paragen.api.generate, []

    def interrupted_in_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(paragen, "generate", interrupted_in_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        write_continuations(cfg, progress=False)
    assert not (tmp_path / "b").exists() and len(list((tmp_path / ".b.work").glob("*.py"))) == 4
    with pytest.raises(InvalidInputError, match="other settings"):
        write_continuations(replace(cfg, seed=1), resume=True, progress=False)
    calls.clear()
    resumed = write_continuations(cfg, resume=True, progress=False)
    assert len(calls) == 1  # only the unfinished batch was decoded again
    assert resumed["new_tokens"] == straight["new_tokens"]
    for name in straight["sources"]:
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    with pytest.raises(InvalidInputError, match="min_prompt_tokens"):
        ContinuationsConfig(min_prompt_tokens=300)


def test_drop_loops_leaves_out_exactly_the_looping_continuations(tmp_path, teacher_dir):
    from paragen.bench.metrics import loops
    from paragen.train.continuations import ContinuationsConfig, cut_prompts, write_continuations
    from paragen.train.corpus import find_corpus

    cfg = ContinuationsConfig(model=str(teacher_dir), out=str(tmp_path / "all"),
                              **{**CONT, "prompts": 12, "new_tokens": 72})  # loops() needs 64 tokens
    every = write_continuations(cfg, progress=False)
    kept = write_continuations(replace(cfg, out=str(tmp_path / "kept"), drop_loops=True), progress=False)
    teacher = paragen.load(teacher_dir)
    prompts = cut_prompts(find_corpus(), teacher.tokenizer, cfg)
    looping = {f"{i:06d}.py" for i, (_, ids) in enumerate(prompts)
               if loops(paragen.generate(teacher, ids, strategy="ar", max_new_tokens=72).tokens)}
    assert 0 < len(looping) < 12, looping  # both kinds occur, so the filter is tested both ways
    assert every["looping"] == kept["looping"] == len(looping) and every["files"] == 12
    assert set(kept["sources"]) == set(every["sources"]) - looping and kept["files"] == 12 - len(looping)
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.py")) == sorted(kept["sources"])
    for name in kept["sources"]:
        assert (tmp_path / "kept" / name).read_text() == (tmp_path / "all" / name).read_text()
