"""LM training: loss goes down, resume is exact, the record is written, shipped models load."""

from __future__ import annotations

import json
from email.message import Message

import pytest
import torch

import paragen
from paragen.errors import InvalidInputError, VocabularyMismatchError
from paragen.models.io import builtin_models, load_native
from paragen.train.corpus import (
    Source,
    build_corpus,
    corpus_sources,
    find_corpus,
    is_heldout,
    is_permissive,
    licence_terms,
    package_source,
    split_key,
)
from paragen.train.lm import TrainConfig, prepare, train_lm
from tests.helpers import TINY_TRAIN


def test_corpus_split_is_deterministic_by_path():
    corpus = find_corpus()
    assert corpus.heldout_files and corpus.train_files
    assert all(is_heldout(f) for f in corpus.heldout_files)
    assert not any(is_heldout(f) for f in corpus.train_files)
    share = len(corpus.heldout_files) / (len(corpus.heldout_files) + len(corpus.train_files))
    assert 0.02 < share < 0.09


@pytest.mark.slow
def test_tiny_training_lowers_heldout_loss(tmp_path):
    rec = train_lm(TrainConfig(out=str(tmp_path / "m"), steps=60, **TINY_TRAIN), progress=False)
    losses = [h["heldout_loss"] for h in rec["history"]]
    assert losses[-1] < losses[0] - 0.3
    saved = json.loads((tmp_path / "m" / "training.json").read_text())
    for key in ("command", "seed", "tokens_seen", "heldout_loss", "heldout_accuracy", "wall_seconds", "machine"):
        assert key in saved
    model = paragen.load(tmp_path / "m")
    assert model.tokenizer.mask_id is not None and model.info.eos_ids == (model.tokenizer.eos_id,)
    (tmp_path / "plain").mkdir()  # the modes the user's umask gives: the model directory follows it
    plain = (tmp_path / "plain").stat().st_mode & 0o777
    assert (tmp_path / "m").stat().st_mode & 0o777 == plain
    assert {f.stat().st_mode & 0o777 for f in (tmp_path / "m").iterdir()} == {plain & 0o666}


@pytest.mark.slow
def test_resume_continues_to_the_same_result(tmp_path):
    straight = train_lm(TrainConfig(out=str(tmp_path / "a"), steps=20, **TINY_TRAIN), progress=False)
    # "interrupted" after 10 of 20 steps (warm-up short, so the cosine schedule is exercised)
    train_lm(TrainConfig(out=str(tmp_path / "b"), steps=20, **TINY_TRAIN), progress=False, stop_at=10)
    resumed = train_lm(TrainConfig(out=str(tmp_path / "b"), steps=20, **TINY_TRAIN), resume=True, progress=False)
    assert resumed["steps"] == straight["steps"] == 20
    a, b = load_native(tmp_path / "a"), load_native(tmp_path / "b")
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert resumed["heldout_loss"] == straight["heldout_loss"]
    assert resumed["history"] == straight["history"]


@pytest.mark.slow
def test_init_continues_a_model_with_its_shape_and_tokenizer(tmp_path, model_dir):
    """``--init``: training starts from the model's weights (its held-out loss, not a random
    model's), keeps its shape whatever --size says, and refuses another tokenizer."""
    first = train_lm(TrainConfig(out=str(tmp_path / "a"), steps=40, **TINY_TRAIN), progress=False)
    cfg = TrainConfig(out=str(tmp_path / "b"), steps=10, **{**TINY_TRAIN, "size": "draft", "eval_every": 10},
                      init=str(tmp_path / "a"), lr=1e-4)
    second = train_lm(cfg, progress=False)
    assert second["model"] == first["model"]  # the init's shape (tiny), not --size draft
    # it starts where the init ended (a random model's loss is ln 300 = 5.7)
    assert abs(second["history"][0]["heldout_loss"] - first["heldout_loss"]) < 0.1
    assert paragen.load(tmp_path / "b").tokenizer.fingerprint() == paragen.load(tmp_path / "a").tokenizer.fingerprint()
    assert "init" not in first
    assert (second["init"]["from"], second["init"]["steps"]) == (str(tmp_path / "a"), 40)
    assert second["init"]["heldout_loss"] == first["heldout_loss"]
    # a model continued twice records both earlier stages, nested
    third = train_lm(TrainConfig(out=str(tmp_path / "d"), steps=2, **TINY_TRAIN, init=str(tmp_path / "b")), progress=False)
    assert (third["init"]["from"], third["init"]["steps"], third["init"]["init"]["steps"]) == (str(tmp_path / "b"), 10, 40)
    assert json.loads((tmp_path / "d" / "training.json").read_text())["init"] == third["init"]
    with pytest.raises(VocabularyMismatchError, match="another tokenizer"):
        train_lm(TrainConfig(out=str(tmp_path / "c"), steps=2, **TINY_TRAIN, init=str(tmp_path / "a"), tokenizer=str(model_dir)),
                 progress=False)


@pytest.mark.slow
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


def test_config_refuses_what_would_silently_differ():
    from paragen.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="precision must be one of bf16, fp32"):
        TrainConfig(precision="fp16")  # fp16 once trained in fp32 without a word
    with pytest.raises(InvalidInputError, match="leave it out for no time budget"):
        TrainConfig(minutes=0)  # 0 once meant "no budget"


def test_cli_rejects_fp16_and_zero_minutes(tmp_path, capsys):
    from paragen.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "lm", "--out", str(tmp_path / "m"), "--precision", "fp16"])
    assert done.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    assert main(["train", "lm", "--out", str(tmp_path / "m"), "--minutes", "0"]) == 2
    assert "minutes must be > 0" in capsys.readouterr().err


def test_train_help_comes_from_the_config(capsys):
    from paragen.cli import main

    with pytest.raises(SystemExit):
        main(["train", "lm", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "held-out evaluation every N steps (default: 200)" in out and "{bf16,fp32}" in out


@pytest.mark.slow
def test_says_what_it_reads_and_times_the_bar_by_the_budget(tmp_path, capsys):
    cfg = TrainConfig(out=str(tmp_path / "m"), steps=100000, minutes=0.05, **TINY_TRAIN)  # a 3-second budget
    rec = train_lm(cfg, progress=True)
    err = capsys.readouterr().err
    assert "paragen train: reading 30 training and 3 held-out files" in err and "training tokens" in err
    assert "/3 [" in err and "/100000 [" not in err  # the bar's total: 3 s of budget, not 100000 steps
    assert f"step={rec['steps']}/100000" in err
    assert rec["steps"] < 100000


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    import paragen.train.lm as lm
    from paragen.cli import main

    calls = []
    real = lm.lm_loss

    def interrupt_at_step_15(model, batch, precision):
        calls.append(1)
        if len(calls) == 15:
            raise KeyboardInterrupt
        return real(model, batch, precision)

    monkeypatch.setattr(lm, "lm_loss", interrupt_at_step_15)
    args = ["train", "lm", "--out", str(tmp_path / "m"), "--steps", "20", "--quiet", "--max-files", "30", "--seq-len",
            "64", "--batch-size", "8", "--vocab-size", "300", "--precision", "fp32", "--checkpoint-every", "10"]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "paragen: interrupted; the last checkpoint is" in err and "--resume`" in err
    checkpoint = torch.load(tmp_path / ".m.work" / "checkpoint.pt", weights_only=False)
    assert checkpoint["progress"]["step"] == 10  # the last one written, untouched by the interrupt
    assert not (tmp_path / "m").exists()


def test_saved_files_follow_the_umask(tmp_path, tokenizer):
    """save_model builds the directory in a private temporary one (0700) and safetensors writes
    0600: the saved model must end with the modes a plain mkdir and open would give."""
    import os
    import stat

    from paragen.models.io import save_model
    from tests.helpers import tiny_model

    for umask, want_dir, want_file in ((0o022, 0o755, 0o644), (0o077, 0o700, 0o600)):
        old = os.umask(umask)
        try:
            out = save_model(tiny_model(0, vocab=tokenizer.vocab_size), tokenizer, tmp_path / f"m{umask:o}")
        finally:
            os.umask(old)
        assert stat.S_IMODE(out.stat().st_mode) == want_dir
        assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {want_file}
        assert not list(tmp_path.glob(".*umask-probe"))


# ---------------------------------------------------------------- the built corpus (`paragen train corpus`)


def _paths(heldout: bool, n: int, prefix: str = "pkg") -> list[str]:
    """``n`` file paths inside a source whose split is ``heldout``."""
    return [p for p in (f"{prefix}/f{i}.py" for i in range(2000)) if is_heldout(p) == heldout][:n]


def _source(root, name: str, files: dict[str, str]) -> Source:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return Source(name, "package", "1.0", "MIT", root, tuple(sorted(files)))


@pytest.mark.slow
def test_built_corpus_never_trains_on_heldout_text(tmp_path):
    held, train, held_b = _paths(True, 2), _paths(False, 4), _paths(True, 1, prefix="other")
    a = _source(tmp_path / "a", "a", {held[0]: "held = 0\n", held[1]: "other = 1\n", train[0]: "x = 1\n",
                                      train[1]: "y = 2\n"})
    # b repeats a held-out text and a training text under training paths (both must go), and
    # holds out a text that a trains on (a's copy must go, though a comes first)
    b = _source(tmp_path / "b", "b", {train[2]: "held = 0\n", train[3]: "x = 1\n", train[0]: "z = 3\n",
                                      held_b[0]: "y = 2\n"})
    tok_dir = builtin_models()["code-target"]
    manifest = build_corpus(tmp_path / "corpus", [a, b], tokenizer=str(tok_dir), progress=False)
    corpus = find_corpus(tmp_path / "corpus")
    assert sorted(corpus.heldout_files) == sorted([f"a/{held[0]}", f"a/{held[1]}", f"b/{held_b[0]}"])
    assert sorted(corpus.train_files) == sorted([f"a/{train[0]}", f"b/{train[0]}"])
    heldout_texts = {corpus.read(f) for f in corpus.heldout_files}
    assert not heldout_texts & set(corpus.texts("train"))
    assert all(is_heldout(split_key(f)) for f in corpus.heldout_files)
    assert not any(is_heldout(split_key(f)) for f in corpus.train_files)
    sa, sb = manifest["sources"]
    assert (sa["train_files"], sa["heldout_files"], sa["duplicates_dropped"]) == (1, 2, 1)
    assert (sb["train_files"], sb["heldout_files"], sb["duplicates_dropped"]) == (1, 1, 2)
    tok = paragen.load("code-target").tokenizer
    assert sb["tokens"]["train"] == len(tok.encode("z = 3\n")) + 1  # + EOS, as train lm streams files
    assert json.loads((tmp_path / "corpus" / "manifest.json").read_text()) == manifest
    _, train_ids, _, split = prepare(TrainConfig(data=str(tmp_path / "corpus"), tokenizer=str(tok_dir)))
    assert len(train_ids) == sa["tokens"]["train"] + sb["tokens"]["train"]  # train lm streams the training files only
    assert [s["name"] for s in split["manifest"]["sources"]] == ["a", "b"]  # the record names its sources
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".corpus")]  # the temporary directory is gone


@pytest.mark.slow
def test_built_corpus_keeps_the_stdlib_heldout_files(tmp_path):
    build_corpus(tmp_path / "c", corpus_sources(["click"]), progress=False)
    built, stdlib = find_corpus(tmp_path / "c"), find_corpus()
    assert [f.removeprefix("stdlib/") for f in built.heldout_files if f.startswith("stdlib/")] == list(stdlib.heldout_files)
    assert any(f.startswith("click/") for f in built.train_files)
    for name in ("code-target", "code-draft"):
        shipped = json.loads((builtin_models()[name] / "training.json").read_text())["split"]
        root, heldout = shipped["root"], shipped["heldout_files"]
        if "manifest" in shipped:  # trained on a built corpus: its stdlib source and files
            root = next(s["from"] for s in shipped["manifest"]["sources"] if s["kind"] == "stdlib")
            heldout = [f.removeprefix("stdlib/") for f in heldout if f.startswith("stdlib/")]
        if root == str(stdlib.root):  # the interpreter the shipped models were trained on
            assert list(stdlib.heldout_files) == heldout, name


def test_only_permissive_packages_enter_the_corpus():
    assert is_permissive(["BSD-3-Clause", "0BSD", "MIT", "Zlib", "CC0-1.0"]) and is_permissive(["Apache", "PSF-2.0"])
    assert not is_permissive(["MPL-2.0", "MIT"]) and not is_permissive(["GPL-3.0-or-later"]) and not is_permissive([])
    msg = Message()
    msg["Classifier"] = "License :: OSI Approved :: Apache Software License"
    assert licence_terms(msg)[1] == ["Apache"]
    msg = Message()
    msg["Classifier"] = "License :: OSI Approved :: GNU General Public License v3 (GPLv3)"
    assert not is_permissive(licence_terms(msg)[1])
    with pytest.raises(InvalidInputError, match="MPL-2.0"):
        package_source("tqdm")  # MPL-2.0 AND MIT
    with pytest.raises(InvalidInputError, match="not installed"):
        package_source("no-such-package-for-paragen")
    src = package_source("click")
    assert src.licence == "BSD-3-Clause" and src.files and all(f.endswith(".py") for f in src.files)


def test_train_corpus_cli_refuses_a_copyleft_package(tmp_path, capsys):
    from paragen.cli import main

    assert main(["train", "corpus", "--out", str(tmp_path / "c"), "--packages", "click,tqdm"]) == 2
    err = capsys.readouterr().err
    assert "tqdm" in err and "MPL-2.0" in err and "--packages" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
