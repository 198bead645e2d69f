"""The command line explains itself and ends every failure with one line: bad bytes,
Ctrl-C, conflicting flags, settings that have no effect."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import paragen
from paragen.cli import main

SRC = str(Path(__file__).resolve().parent.parent / "src")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"paragen {paragen.__version__}"


def test_non_utf8_stdin_is_one_line(model_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"def f():\n    return '\xff\xfe'\n")))
    assert main(["generate", "-", "--model", str(model_dir), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 (byte 0xff at offset 21)" in err and err.count("\n") == 1


def test_interrupt_is_one_line_and_130(model_dir, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("paragen.cli.run_generate", interrupted)
    assert main(["generate", "x", "--model", str(model_dir)]) == 130
    assert capsys.readouterr().err == "paragen: interrupted\n"


def test_ctrl_c_while_starting():
    """A real SIGINT, while torch loads or while the command waits for stdin: exit 130, one line."""
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-m", "paragen", "generate", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    time.sleep(1.5)  # past interpreter start-up: inside main(), importing torch or reading stdin
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.decode() == "paragen: interrupted\n" and out == b""


def test_stream_and_json_exclude_each_other(model_dir, capsys):
    with pytest.raises(SystemExit) as done:
        main(["generate", "x", "--model", str(model_dir), "--stream", "--json"])
    assert done.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_greedy_notes_ignored_sampling_flags_once(model_dir, capsys):
    args = ["generate", "def add(a, b):", "--model", str(model_dir), "--max-new-tokens", "4"]
    assert main([*args, "--seed", "3", "--top-k", "5"]) == 0
    err = capsys.readouterr().err
    assert err == "paragen: note: --top-k, --seed have no effect with --temperature 0 (greedy decoding is deterministic)\n"
    assert main([*args, "--seed", "3", "--top-k", "5", "--temperature", "0.8"]) == 0
    assert capsys.readouterr().err == ""
    # a lossy strategy may use the seed when greedy (diffusion's random ordering): no note
    assert main([*args[:2], "--strategy", "diffusion", "--seed", "3"]) == 2  # a causal model: refused, quietly
    assert "note" not in capsys.readouterr().err


def test_stats_and_threads(model_dir, capsys):
    before = torch.get_num_threads()
    args = ["generate", "def add(a, b):", "--model", str(model_dir), "--max-new-tokens", "5", "--threads", "2"]
    assert main([*args, "--stats"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("[ar: ") and "target calls" in captured.err and "tok/s" in captured.err
    assert torch.get_num_threads() == before  # set for the command only
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["new_tokens"] <= 5
    assert main([*args[:-2], "--threads", "0"]) == 2
    assert "threads must be an integer >= 1" in capsys.readouterr().err


def test_bad_boolean_option_is_an_error(model_dir, capsys):
    assert main(["generate", "x = 1", "--model", str(model_dir), "--strategy", "lookahead",
                 "-o", "pool_from_prompt=ture"]) == 2
    assert "needs a boolean (true/false, 1/0, yes/no), got 'ture'" in capsys.readouterr().err


def test_every_option_and_train_flag_has_help():
    """The convention: each field's help lives in its dataclass metadata (shown by --help)."""
    from dataclasses import fields

    from paragen.bench.peers import PEERS
    from paragen.strategies import STRATEGIES
    from paragen.train.diffusion import DiffusionTrainConfig
    from paragen.train.distill import DistillConfig
    from paragen.train.heads import HeadsTrainConfig
    from paragen.train.lm import TrainConfig

    classes = [c.Options for c in [*STRATEGIES.values(), *PEERS.values()]] + [TrainConfig, DiffusionTrainConfig,
                                                                              HeadsTrainConfig, DistillConfig]
    missing = [f"{cls.__qualname__}.{f.name}" for cls in classes for f in fields(cls) if not f.metadata.get("help")]
    assert not missing, f"fields without help metadata: {missing}"


def test_generate_help_shows_option_meanings(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "k=4" in out and "draft tokens per step" in out and "low_confidence | random | margin | entropy" in out


def test_hf_loading_draws_no_progress_bars(model_dir, capfd):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from paragen.quiet import quiet_transformers

    AutoModelForCausalLM.from_pretrained(str(model_dir))  # transformers on its own draws its bar
    assert "Loading weights" in capfd.readouterr().err
    assert main(["generate", "def add(a, b):", "--model", str(model_dir), "--backend", "hf",
                 "--max-new-tokens", "3"]) == 0
    assert "Loading weights" not in capfd.readouterr().err
    import paragen

    paragen.load(model_dir, backend="hf")  # the library call too
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored after the command
    hf_logging.disable_progress_bar()
    try:
        with quiet_transformers():
            pass
        assert not hf_logging.is_progress_bar_enabled()  # a caller's own choice is kept too
    finally:
        hf_logging.enable_progress_bar()


def test_bench_help_names_its_option_syntax(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "(--option STRATEGY:KEY=VALUE;" in out and "-o KEY=VALUE" not in out and "max_draft=10" in out


def test_stats_line_bench_and_metrics_count_the_same_drafts():
    """One lookup generation: --stats, the bench's draft statistics and /metrics show the same drafts."""
    from paragen.bench.metrics import Record, draft_statistics
    from paragen.cli import stats_line
    from paragen.serve.metrics import Metrics
    from tests.helpers import tiny_model

    gen = paragen.generate(tiny_model(0), [1, 2, 3, 4] * 4, "lookup", max_new_tokens=30)
    s = gen.stats
    proposed, accepted = sum(s.extra["proposed"]), sum(s.extra["accepted"])
    assert proposed > 0 and s.extra["nodes"] == proposed  # a chain: one token per position
    record = Record("t", "lookup", 16, s.new_tokens, s.target_calls, s.draft_calls, s.seconds, tuple(gen.tokens), "",
                    s.finish_reason, s.committed_per_call, s.extra)
    per_call, rates = draft_statistics([record])
    assert per_call == pytest.approx(proposed / s.target_calls) and len(rates) == len(s.extra["proposed"])
    line = stats_line(gen)
    assert f"drafts {accepted}/{proposed} accepted ({accepted / proposed:.0%}), {per_call:.2f} drafted/call" in line
    metrics = Metrics(lambda: 0, lambda: 0)
    metrics.decoded(s)
    text = metrics.render()

    def value(name: str) -> float:
        found = re.search(rf'^{name}{{strategy="lookup"}} (\S+)$', text, re.M)
        assert found, name
        return float(found.group(1))

    assert value("paragen_draft_tokens_proposed_total") == proposed
    assert value("paragen_draft_tokens_accepted_total") == accepted
    assert value("paragen_acceptance_rate") == pytest.approx(accepted / proposed)


def test_lossy_results_say_so_in_stats_and_json(model_dir, capsys):
    from paragen.cli import stats_line
    from paragen.models.native import NativeConfig, NativeModel

    args = ["generate", "def add(a, b):", "--model", str(model_dir), "--max-new-tokens", "4"]
    assert main([*args, "--stats"]) == 0
    assert "lossy" not in capsys.readouterr().err
    assert main([*args, "--dtype", "int8-weights", "--stats"]) == 0
    assert capsys.readouterr().err.rstrip().endswith(", lossy (weights: int8-weights)]")
    for backend in ("native", "hf"):
        assert main([*args, "--dtype", "bfloat16", "--backend", backend, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["stats"]["extra"]["weights"] == "bfloat16 (lossy)"
    cfg = NativeConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2, attention="bidirectional", mask_token_id=39)
    diffusion = NativeModel(cfg).init_weights(0).eval()
    gen = paragen.generate(diffusion, [1, 2, 3], "diffusion", max_new_tokens=4)
    assert gen.stats.extra["lossy"] is True and stats_line(gen).endswith(", lossy]")


def test_errors_name_the_flag_typed(model_dir, capsys):
    """Refusals that the API words with its arguments (temperature=0, heads=, draft=) name the CLI's flags."""
    args = ["generate", "def add(a, b):", "--model", str(model_dir), "--max-new-tokens", "2"]
    cases = [
        (["--strategy", "jacobi", "--temperature", "0.5"], "--strategy jacobi is greedy-only: use --temperature 0"),
        (["--heads", "code-target-medusa"], "--strategy ar uses no prediction heads: drop --heads"),
        (["--draft", str(model_dir)], "--strategy ar uses no draft model: drop --draft"),
        (["--strategy", "speculative"], "--strategy speculative needs a draft model: add --draft NAME_OR_DIR"),
        (["--strategy", "medusa"], "has none built in: add --heads DIR"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--top-k", "0"], "--top-k must be an integer >= 1, got 0"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
    ]
    for extra, message in cases:
        assert main([*args, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
        assert "=0" not in err and "heads=" not in err and "draft=" not in err, err  # no API syntax


def test_ctrl_c_prints_the_committed_text_then_one_line(model_dir, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        yield "def"
        yield " f(x):"
        raise KeyboardInterrupt

    monkeypatch.setattr(paragen, "stream", interrupted)
    for flag in ([], ["--stream"]):
        assert main(["generate", "x", "--model", str(model_dir), *flag]) == 130
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("def f(x):\n", "paragen: interrupted\n"), flag


def test_a_whitespace_prompt_is_continued_and_the_help_says_why(model_dir, capsys):
    assert main(["generate", "    ", "--model", str(model_dir), "--max-new-tokens", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tokens"]) == 3
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "only whitespace is continued as given" in " ".join(capsys.readouterr().out.split())


def test_a_model_without_tokenizer_files(model_dir, tmp_path, capsys):
    """The warning points at the caller's line and says text is empty; the CLI takes --prompt-ids."""
    import shutil
    import warnings

    from paragen.models import NoTokenizerWarning

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    with pytest.warns(NoTokenizerWarning, match="text is empty") as caught:
        model = paragen.load(bare)
    assert caught[0].filename == __file__  # the caller's line, not paragen.api's
    assert paragen.generate(model, [1, 2, 3], max_new_tokens=3).text == ""
    assert main(["generate", "def f", "--model", str(bare)]) == 2
    assert "no tokenizer files, so no text prompt: give the prompt as token ids with --prompt-ids" in \
        capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI handles it: no warning line either
        assert main(["generate", "--prompt-ids", "1,2,3", "--model", str(bare), "--max-new-tokens", "3"]) == 0
    ids = paragen.generate(model, [1, 2, 3], max_new_tokens=3).tokens
    captured = capsys.readouterr()
    assert captured.out == ",".join(map(str, ids)) + "\n" and captured.err == ""
    assert main(["generate", "--prompt-ids", "1,x", "--model", str(bare)]) == 2
    assert "--prompt-ids takes comma-separated token ids" in capsys.readouterr().err


def test_warnings_are_one_line(tmp_path, capsys):
    """A warning during a command prints as one 'paragen: warning:' line, not a file and a code line."""
    import numpy as np
    import soundfile as sf

    from paragen.speech.model import save_speech_model
    from tests.helpers import tiny_speech

    (tmp_path / "m").mkdir()
    save_speech_model(tiny_speech(0).float(), tmp_path / "m")
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    sf.write(tmp_path / "tone.wav", tone, 16000)
    assert main(["transcribe", str(tmp_path / "tone.wav"), "--model", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("paragen: warning: ") and "steady noise or a tone" in err and err.count("\n") == 1


def test_the_commands_share_their_flags():
    """--threads, --dtype, --backend, --compile and --device mean the same in every command that has them."""
    from paragen.cli import build_parser
    from paragen.models import DTYPE_CHOICES
    from paragen.threads import DEFAULT_THREADS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))

    def flags(*path):
        p = sub.choices[path[0]]
        for name in path[1:]:
            p = next(a for a in p._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices[name]
        return {a.dest: a for a in p._actions}

    for command in ("generate", "serve", "bench"):
        f = flags(command)
        assert f["threads"].default == DEFAULT_THREADS, command
        assert tuple(f["dtype"].choices) == DTYPE_CHOICES, command
        assert {"backend", "compile", "device"} <= set(f), command
    assert flags("transcribe")["threads"].default == DEFAULT_THREADS
    from paragen.flags import load_kwargs

    gen = sub.choices["generate"]
    for argv, compile_, prompt in ((["def f():"], False, "def f():"), (["--compile", "def f():"], True, "def f():"),
                                   (["--compile-auto", "x"], "auto", "x")):
        args = gen.parse_args(argv)  # --compile takes no value: the prompt after it stays the prompt
        assert (load_kwargs(args)["compile"], args.prompt) == (compile_, prompt), argv
    heads = flags("train", "heads")
    assert "threads" in heads and "device" in heads and heads["threads"].default is None
