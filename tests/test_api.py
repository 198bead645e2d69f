"""Bad input gets a clear, typed error; the CLI prints one line and exits non-zero."""

from __future__ import annotations

import json

import pytest

import paragen
from paragen.cli import main
from paragen.errors import (
    ContextLengthError,
    InvalidInputError,
    UnknownStrategyError,
    UnsupportedOptionError,
    VocabularyMismatchError,
)
from tests.conftest import tiny_model

MODEL = tiny_model(0, max_len=64)


@pytest.mark.parametrize("kwargs,error", [
    (dict(prompt=[]), InvalidInputError),
    (dict(prompt=[1] * 60, max_new_tokens=10), ContextLengthError),
    (dict(prompt=[1, 2, 999]), InvalidInputError),
    (dict(strategy="nope"), UnknownStrategyError),
    (dict(strategy="lookup", window=3), UnsupportedOptionError),
    (dict(strategy="lookup", max_ngram=0), UnsupportedOptionError),
    (dict(strategy="jacobi", temperature=0.7), UnsupportedOptionError),
    (dict(strategy="speculative"), InvalidInputError),
    (dict(strategy="ar", draft=MODEL), UnsupportedOptionError),
    (dict(strategy="speculative", draft=tiny_model(1, vocab=60)), VocabularyMismatchError),
    (dict(max_new_tokens=0), InvalidInputError),
    (dict(max_new_tokens=-3), InvalidInputError),
    (dict(temperature=-1.0), InvalidInputError),
    (dict(temperature=1.0, top_p=2.0), InvalidInputError),
    (dict(prompt="text but no tokenizer"), InvalidInputError),
    (dict(prompt=["a batch", "of prompts"]), InvalidInputError),
    (dict(strategy="diffusion"), UnsupportedOptionError),  # a causal model
])
def test_bad_input_raises_typed_error(kwargs, error):
    kwargs = {"prompt": [1, 2, 3], **kwargs}
    prompt = kwargs.pop("prompt")
    with pytest.raises(error) as info:
        paragen.generate(MODEL, prompt, **kwargs)
    assert str(info.value)  # a message that says what to do


def test_causal_strategy_refuses_a_diffusion_model():
    bidirectional = tiny_model(0, attention="bidirectional")
    with pytest.raises(UnsupportedOptionError, match="pick a strategy for it"):
        paragen.generate(bidirectional, [1, 2, 3], "ar")


def test_errors_are_paragen_errors():
    with pytest.raises(paragen.ParagenError):
        paragen.generate(MODEL, [1], strategy="nope")


def test_cli_json(model_dir, capsys):
    assert main(["generate", "def add(a, b):", "--model", str(model_dir), "--max-new-tokens", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"text", "tokens", "stats"}
    assert out["stats"]["new_tokens"] == len(out["tokens"]) <= 12
    assert out["stats"]["target_calls"] == out["stats"]["new_tokens"] + (out["stats"]["finish_reason"] == "eos")


def test_cli_dtype(model_dir, capsys):
    args = ["generate", "def add(a, b):", "--model", str(model_dir), "--max-new-tokens", "6", "--json"]
    assert main([*args, "--dtype", "bfloat16"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tokens"]) <= 6
    with pytest.raises(SystemExit) as exit_:  # argparse: usage and the valid choices, exit 2
        main([*args, "--dtype", "int8"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cli_strategy_options_and_stdin(model_dir, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("class Point:"))
    args = ["generate", "-", "--model", str(model_dir), "--strategy", "lookup", "-o", "max_draft=4", "--json"]
    assert main(args) == 0
    lookup = json.loads(capsys.readouterr().out)
    assert main(["generate", "class Point:", "--model", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == lookup["tokens"]


@pytest.mark.parametrize("args,needle", [
    (["--strategy", "nope"], "unknown strategy"),
    (["--strategy", "lookup", "-o", "bogus=1"], "has no option bogus"),
    (["--strategy", "lookup", "-o", "max_draft=x"], "needs a int"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--temperature", "-2"], "temperature"),
    (["--strategy", "speculative"], "needs a draft"),
])
def test_cli_errors_are_one_line(model_dir, capsys, args, needle):
    assert main(["generate", "x = 1", "--model", str(model_dir), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_missing_model(capsys, tmp_path):
    assert main(["generate", "x", "--model", str(tmp_path / "missing")]) == 2
    assert "neither a directory nor a built-in model" in capsys.readouterr().err


def test_cli_stream(model_dir, capsys):
    assert main(["generate", "def add(a, b):", "--model", str(model_dir), "--max-new-tokens", "10", "--stream"]) == 0
    captured = capsys.readouterr()
    assert "tokens/call" in captured.err
