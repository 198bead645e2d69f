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
from tests.helpers import tiny_model

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
    (["--strategy", "lookup", "-o", "max_draft=x"], "needs an integer"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),  # the flag typed, not the API's max_new_tokens
    (["--temperature", "-2"], "--temperature"),
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


@pytest.mark.parametrize("strategy,options,needle", [
    ("speculative", dict(k=2.7), "needs an integer, got 2.7"),
    ("speculative", dict(k="2.7"), "needs an integer, got '2.7'"),
    ("speculative", dict(k=True), "needs an integer"),
    ("speculative", dict(adaptive="ture"), "needs a boolean"),
    ("speculative", dict(adaptive=2), "needs a boolean"),
    ("diffusion", dict(threshold="high"), "needs a number"),
    ("diffusion", dict(cache=1), "needs a string"),
])
def test_make_options_checks_types(strategy, options, needle):
    from paragen.options import make_options
    from paragen.strategies import get_strategy

    with pytest.raises(UnsupportedOptionError, match=needle.replace("(", r"\(")):
        make_options(get_strategy(strategy), options)


@pytest.mark.parametrize("text,value", [("true", True), ("YES", True), ("1", True), ("False", False), ("no", False),
                                        ("0", False)])
def test_make_options_booleans_from_strings(text, value):
    from paragen.options import make_options
    from paragen.strategies import get_strategy

    opts = make_options(get_strategy("speculative"), {"adaptive": text, "k": "3"})
    assert opts.adaptive is value and opts.k == 3
    assert make_options(get_strategy("diffusion"), {"threshold": 1, "steps": "4"}).threshold == 1.0


def test_sampling_settings_name_the_wrong_type():
    with pytest.raises(InvalidInputError, match="temperature must be a number, got str '0.5'"):
        paragen.generate(MODEL, [1, 2, 3], temperature="0.5")
    with pytest.raises(InvalidInputError, match="top_k must be an integer"):
        paragen.generate(MODEL, [1, 2, 3], temperature=1.0, top_k=2.5)


def test_options_are_bounded_by_what_one_call_holds():
    from paragen.strategies.base import MAX_CALL_TOKENS

    # 1 + 49 * (500 + 50) tokens per call: refused before any work (this once ran 10 minutes at 5.8 GB)
    with pytest.raises(UnsupportedOptionError, match="26951 tokens per model call.*values of window, ngram, guesses$"):
        paragen.generate(tiny_model(0, max_len=4096), [1, 2, 3], "lookahead", max_new_tokens=16,
                         window=500, ngram=50, guesses=50)
    with pytest.raises(UnsupportedOptionError, match="model context"):  # MODEL's context is 64 tokens
        paragen.generate(MODEL, [1, 2, 3], "jacobi", max_new_tokens=4, window=64)
    big = tiny_model(0, max_len=4 * MAX_CALL_TOKENS)
    with pytest.raises(UnsupportedOptionError, match="MAX_CALL_TOKENS"):
        paragen.generate(big, [1, 2, 3], "lookup", max_new_tokens=4, max_draft=MAX_CALL_TOKENS)
    assert paragen.generate(MODEL, [1, 2, 3], "jacobi", max_new_tokens=4, window=62).stats.new_tokens == 4


def test_stream_exposes_the_generation():
    it = paragen.stream(MODEL, [1, 2, 3], "lookup", max_new_tokens=8)
    assert it.generation is None
    pieces = list(it)
    assert pieces == [] and it.generation.stats.new_tokens == 8  # no tokenizer: no text pieces
    assert it.generation.tokens == paragen.generate(MODEL, [1, 2, 3], "ar", max_new_tokens=8).tokens
    again = paragen.stream(MODEL, [1, 2, 3], max_new_tokens=3)
    with pytest.raises(StopIteration) as done:  # the generator protocol still holds
        while True:
            next(again)
    assert done.value.value is again.generation
    assert list(again) == [] and again.generation is done.value.value  # exhausted: the result stays


def test_stream_close_stops_decoding(model_dir):
    model = paragen.load(model_dir)
    stopped = paragen.stream(model, "def add(a, b):", max_new_tokens=50)
    assert next(stopped)  # a first piece of text
    stopped.close()  # decoding ends where it stands (a server's client left)
    assert list(stopped) == [] and stopped.generation is None


def test_stream_checks_arguments_when_called():
    with pytest.raises(InvalidInputError):
        paragen.stream(MODEL, [], max_new_tokens=3)  # no next() needed
