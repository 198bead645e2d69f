"""paragen bench: metrics on hand-computed records, errors, outputs, and one end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import paragen
from paragen.bench.metrics import (
    Record,
    bootstrap_ratio_ci,
    completion_parses,
    function_completion,
    pooled_perplexity,
    score_against_reference,
    summarize,
    token_agreement,
)
from paragen.bench.report import bench_json, markdown_table, write_atomic
from paragen.bench.run import BenchConfig, build_contenders, load_models, output_perplexity, parse_option
from paragen.cli import main
from paragen.errors import InvalidInputError, UnknownStrategyError, UnsupportedOptionError
from paragen.models.native import NativeConfig, NativeModel
from paragen.strategies import STRATEGIES


def rec(task: str, strategy: str, tokens: tuple[int, ...], calls: int | None, seconds: float, **kw) -> Record:
    kw.setdefault("committed_per_call", None)
    return Record(task, strategy, 10, len(tokens), calls, 0, seconds, tokens, "", "length", **kw)


@pytest.fixture()
def records() -> list[Record]:
    """Two prompts; ar, a lossless 'fast', a lossy 'rough' and a lossless-but-wrong 'buggy'."""
    return [
        rec("p1", "ar", (1, 2, 3, 4), 4, 2.0, committed_per_call={1: 4}, gen_ppl=2.0, ast_ok=True),
        rec("p2", "ar", (5, 6), 2, 1.0, committed_per_call={1: 2}, gen_ppl=4.0, ast_ok=True),
        rec("p1", "fast", (1, 2, 3, 4), 2, 1.0, committed_per_call={2: 2}, gen_ppl=2.0, ast_ok=True),
        rec("p2", "fast", (5, 6), 1, 0.5, committed_per_call={2: 1}, gen_ppl=4.0, ast_ok=True),
        rec("p1", "rough", (1, 2, 9, 4), 1, 0.5, gen_ppl=2.0, ast_ok=True),
        rec("p2", "rough", (5,), 1, 1.0, gen_ppl=8.0, ast_ok=False),
        rec("p1", "buggy", (1, 2, 3, 4), None, 2.0, gen_ppl=2.0, ast_ok=True),
        rec("p2", "buggy", (5, 7), None, 1.0, gen_ppl=4.0, ast_ok=True),
    ]


def test_summary_metrics_match_hand_computed_values(records):
    s = summarize(records, {"ar": True, "fast": True, "rough": False, "buggy": True}, {"buggy"}, greedy=True, seed=0)
    assert list(s) == ["ar", "fast", "rough", "buggy"]
    ar, fast, rough, buggy = s.values()
    assert (ar.tokens_per_call, ar.speedup, ar.speedup_ci95, ar.exact, ar.agree) == (1.0, 1.0, (1.0, 1.0), 1.0, 1.0)
    # fast: 6 tokens / 3 calls; (2 + 1) / (1 + 0.5) seconds; the ratio is 2 on both prompts, so is its interval.
    assert fast.tokens_per_call == pytest.approx(2.0)
    assert fast.speedup == pytest.approx(2.0)
    assert fast.speedup_ci95 == pytest.approx((2.0, 2.0))
    assert fast.tok_s == pytest.approx(6 / 1.5)
    assert (fast.exact, fast.agree, fast.non_exact, fast.flagged) == (1.0, 1.0, (), False)
    assert fast.committed_per_call == {2: 3}
    # rough: 5 tokens / 2 calls; agreement 3/4 and 1/2 (the missing token disagrees).
    assert rough.tokens_per_call == pytest.approx(2.5)
    assert rough.speedup == pytest.approx(3.0 / 1.5)
    assert 1.0 <= rough.speedup_ci95[0] <= 2.0 <= rough.speedup_ci95[1] <= 4.0  # per-prompt ratios are 4 and 1
    assert rough.exact == 0.0 and rough.non_exact == ("p1", "p2")
    assert rough.agree == pytest.approx((0.75 + 0.5) / 2)
    assert rough.gen_ppl == pytest.approx(math.exp((4 * math.log(2) + 1 * math.log(8)) / 5))  # 2 ** 1.4
    assert rough.ast_ok == 0.5
    assert not rough.flagged  # lossy: differing from ar is expected
    assert rough.committed_per_call is None
    # buggy claims losslessness but differs on p2: flagged; its calls were not counted.
    assert buggy.exact == 0.5 and buggy.non_exact == ("p2",) and buggy.flagged
    assert buggy.tokens_per_call is None and buggy.target_calls is None and buggy.peer


def test_sampling_runs_do_not_flag_lossless_strategies(records):
    s = summarize(records, {"ar": True, "fast": True, "rough": False, "buggy": True}, set(), greedy=False, seed=0)
    assert s["buggy"].exact == 0.5 and not s["buggy"].flagged


def test_score_against_reference_marks_non_exact_records(records):
    scored = {(r.task_id, r.strategy): r for r in score_against_reference(records)}
    assert scored["p1", "buggy"].exact and not scored["p2", "buggy"].exact
    assert scored["p2", "buggy"].agree == 0.5
    with pytest.raises(ValueError, match="no 'ar' record"):
        score_against_reference([r for r in records if not (r.strategy == "ar" and r.task_id == "p2")])


def test_token_agreement_counts_over_the_longer_output():
    assert token_agreement([], []) == 1.0
    assert token_agreement([1, 2], [1, 3]) == 0.5
    assert token_agreement([1], [1, 2, 3]) == pytest.approx(1 / 3)
    assert token_agreement([4, 5], []) == 0.0


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    num, den = [4.0, 1.0, 2.0, 3.0, 1.5], [1.0, 1.0, 1.5, 1.0, 2.0]
    a = bootstrap_ratio_ci(num, den, seed=3)
    assert a == bootstrap_ratio_ci(num, den, seed=3)
    assert a != bootstrap_ratio_ci(num, den, seed=4)
    assert a[0] < sum(num) / sum(den) < a[1]
    assert bootstrap_ratio_ci([3.0], [1.5], seed=0) == (2.0, 2.0)


def test_pooled_perplexity_weights_by_tokens():
    rs = [rec("a", "x", (1, 2, 3), 3, 1.0, gen_ppl=3.0), rec("b", "x", (1,), 1, 1.0, gen_ppl=27.0),
          rec("c", "x", (), 1, 1.0, gen_ppl=None)]
    assert pooled_perplexity(rs) == pytest.approx(math.exp((3 * math.log(3) + math.log(27)) / 4))  # 3 ** 1.5
    assert pooled_perplexity(rs[2:]) is None


def test_function_completion_cut_rule():
    prompt = 'def f(x):\n    """Double."""\n'
    assert function_completion(prompt, "    return 2 * x\n\nprint(f(1))\n") == prompt + "    return 2 * x\n\n"
    assert completion_parses(prompt, "    return 2 * x\n\nprint(f(1))\n")
    assert not completion_parses(prompt, "    return (2 * x\n")
    # A method: cut at the next line at the def's level, then dedented.
    method = "class A:\n    def f(self):\n"
    assert function_completion(method, "        return 1\n    def g(self):\n        return (") == (
        "def f(self):\n    return 1\n")
    # The output's first line continues the prompt's last line: never a cut point.
    assert function_completion("def f(x):\n    return", " x\nfoo(") == "def f(x):\n    return x\n"
    # The last def of the prompt is the one completed (HumanEval prompts may hold helpers).
    assert function_completion("def a():\n    pass\n\n\ndef b():\n", "    return 0\n") == "def b():\n    return 0\n"
    assert not completion_parses("def f():\n", "\nx = 1\n")  # an empty body is not a function
    # a docstring prompt parses alone: an output that leaves the function at once wrote nothing
    doc = 'def f():\n    """Doc."""\n'
    assert not completion_parses(doc, "\ndef g():\n    return 1\n")
    assert completion_parses(doc, "    return 1\n\ndef g():\n")


def test_output_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = NativeModel(NativeConfig(vocab_size=37, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # zero logits everywhere: the uniform distribution
    assert output_perplexity(model, (1, 2, 3), (4, 5)) == pytest.approx(37.0)
    assert output_perplexity(model, (1, 2, 3), ()) is None


def test_contenders_add_ar_and_validate_names_and_options():
    config = BenchConfig(strategies=("lookup", "hf-greedy", "lookup"), options=(("lookup", "max_draft", "8"),))
    got = build_contenders(config)
    assert [c.name for c in got] == ["ar", "lookup", "hf-greedy"]
    assert got[1].options.max_draft == 8 and got[2].peer and not got[1].peer
    with pytest.raises(UnknownStrategyError, match="unknown strategy 'nope'.*hf-lookup"):
        build_contenders(BenchConfig(strategies=("nope",)))
    with pytest.raises(UnsupportedOptionError, match="no option bogus"):
        build_contenders(BenchConfig(strategies=("lookup",), options=(("lookup", "bogus", "1"),)))
    with pytest.raises(UnsupportedOptionError, match="prompt_lookup_num_tokens needs an integer"):
        option = ("hf-lookup", "prompt_lookup_num_tokens", "x")
        build_contenders(BenchConfig(strategies=("hf-lookup",), options=(option,)))
    with pytest.raises(InvalidInputError, match="not benchmarked"):
        build_contenders(BenchConfig(strategies=("ar",), options=(("lookup", "max_draft", "8"),)))
    causal = [n for n, c in STRATEGIES.items() if c.attention == "causal"]  # code-target has built-in heads of every kind
    everything = [c.name for c in build_contenders(BenchConfig(strategies=("all",)))]
    from paragen.bench.peers import LlamaCpp

    llama = ["llamacpp", "llamacpp-f16", "llamacpp-q8_0"] if LlamaCpp.available() else []  # where installed
    assert everything == [*causal, "hf-greedy", "hf-assisted", "hf-lookup", *llama]
    with_diffusion = BenchConfig(strategies=("all",), models=(("diffusion", "some-diffusion-model"),))
    assert "diffusion" in [c.name for c in build_contenders(with_diffusion)]
    assert parse_option("lookup:max-draft=8") == ("lookup", "max_draft", "8")
    with pytest.raises(InvalidInputError, match="STRATEGY:KEY=VALUE"):
        parse_option("max_draft=8")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strategies", "ar,nope"], "unknown strategy 'nope'"),
        (["--task", "nope"], "unknown task 'nope'"),
        (["--option", "lookup:bogus=1"], "no option bogus"),
        (["--option", "lookup"], "STRATEGY:KEY=VALUE"),
        (["--max-new-tokens", "0"], "max-new-tokens must be >= 1"),
        (["--model-for", "ar=elsewhere"], "'ar' runs on --model"),
        (["--model-for", "jacobi=elsewhere"], "--model-for 'jacobi', which is not benchmarked"),
        (["--model-for", "lookup"], "STRATEGY=MODEL"),
        (["--model", "my-model", "--strategies", "medusa"], "none are built in for --model: give them with --heads medusa=DIR"),
        (["--heads", "medusa=somewhere"], "--heads 'medusa', which is not benchmarked"),
        (["--strategies", "jacobi", "--temperature", "0.5"], "'jacobi' is greedy-only"),
        (["--temperature", "0.5", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ],
)
def test_cli_errors_are_clear_and_early(flags, message, tmp_path, capsys):
    # The default model does not exist here: each error must come before any model is loaded.
    assert main(["bench", "--out", str(tmp_path / "o"), "--strategies", "ar,lookup", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sampled_bench_passes_top_p_to_every_contender(tiny_models, tmp_path, monkeypatch):
    """--temperature and --top-p reach paragen strategies and the transformers peers alike."""
    import paragen
    from paragen.bench import peers

    tiny, _ = tiny_models
    seen = []
    real_generate, real_peer = paragen.generate, peers.run_peer
    monkeypatch.setattr(paragen, "generate", lambda *a, **k: seen.append(("paragen", k["top_p"])) or real_generate(*a, **k))
    monkeypatch.setattr("paragen.bench.run.run_peer", lambda *a: seen.append(("peer", a[-1])) or real_peer(*a))
    rc = main(["bench", "--strategies", "spectr,hf-greedy", "--task", "humaneval", "--limit", "1", "--max-new-tokens", "6",
               "--model", str(tiny), "--draft", str(tiny), "--temperature", "0.8", "--top-p", "0.9", "--threads", "1",
               "--no-progress", "--out", str(tmp_path / "o")])
    assert rc == 0
    bench = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert bench["config"]["top_p"] == 0.9 and bench["config"]["temperature"] == 0.8
    assert {kind for kind, _ in seen} == {"paragen", "peer"} and {top_p for _, top_p in seen} == {0.9}


def test_markdown_table_lists_every_strategy_and_flags(records):
    s = summarize(records, {"ar": True, "fast": True, "rough": False, "buggy": True}, {"buggy"}, greedy=True, seed=0)
    table = markdown_table(s)
    lines = table.splitlines()
    assert lines[0].startswith("| strategy | exact | tok/call | speedup [95% CI]")
    assert lines[3].startswith("| fast | 1.00 | 2.00 | 2.00 [2.00, 2.00] |")
    assert "| rough (lossy) | 0.00 |" in table and "| buggy (peer) | 0.50 (!) |" in table
    assert "(!) buggy is lossless but differed from ar on 1 of 2 prompts: p2" in table


def test_write_atomic_creates_directories_and_leaves_no_temp_files(tmp_path):
    path = write_atomic(tmp_path / "new" / "x.json", bench_json({"a": 1, "records": [{"b": [1, 2]}], "c": []}))
    assert json.loads(path.read_text()) == {"a": 1, "records": [{"b": [1, 2]}], "c": []}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


# ---------------------------------------------------------------- end to end on a tiny model


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two tiny random models with one tokenizer: different weights, so different outputs (std 0.2:
    at the default 0.02 a tiny tied model just repeats its last input token)."""
    from paragen.models.io import save_model
    from paragen.tasks import humaneval
    from paragen.train.tokenizer import train_tokenizer

    tok = train_tokenizer([t.prompt for t in humaneval()[:20]], vocab_size=300)
    config = NativeConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                          eos_token_id=tok.eos_id, mask_token_id=tok.mask_id)
    root = tmp_path_factory.mktemp("m")
    return tuple(save_model(NativeModel(config).init_weights(seed=s, std=0.2), tok, root / f"tiny{s}") for s in (0, 1))


MAYBE_INT, MAYBE_FLOAT, MAYBE_DICT = (int, type(None)), (float, type(None)), (dict, type(None))
RECORD_TYPES = {"task_id": str, "strategy": str, "prompt_tokens": int, "new_tokens": int, "target_calls": MAYBE_INT,
                "draft_calls": MAYBE_INT, "seconds": float, "tokens": list, "text": str, "finish_reason": str,
                "committed_per_call": MAYBE_DICT, "extra": MAYBE_DICT, "exact": bool, "agree": float, "gen_ppl": MAYBE_FLOAT,
                "ast_ok": bool}
SUMMARY_KEYS = {"strategy", "lossless", "peer", "prompts", "new_tokens", "target_calls", "draft_calls", "seconds",
                "tokens_per_call", "tok_s", "speedup", "speedup_ci95", "exact", "non_exact", "agree", "gen_ppl",
                "ast_ok", "loops", "committed_per_call", "flagged", "drafted_per_call", "acceptance", "repeats", "auto_segments"}
ENV_KEYS = {"paragen", "python", "torch", "transformers", "numpy", "platform", "cpu", "cpu_count", "torch_threads",
            "cuda", "gpu", "git_commit", "command", "started"}


def test_bench_end_to_end_on_a_tiny_model(tiny_models, tmp_path, capsys):
    tiny, other = tiny_models
    out = tmp_path / "out"
    # lookup runs on other weights (--model-for): it cannot reproduce ar, and must be flagged.
    rc = main(["bench", "--strategies", "speculative,lookup,tree@static,hf-greedy,hf-assisted,hf-lookup", "--task",
               "humaneval", "--limit", "2", "--max-new-tokens", "8", "--model", str(tiny), "--draft", str(tiny),
               "--option", "lookup:max_draft=3", "--option", "tree@static:shape=static",
               "--model-for", f"lookup={other}", "--threads", "1", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    bench = json.loads((out / "bench.json").read_text())

    # The documented schema.
    assert list(bench) == ["schema", "config", "environment", "contenders", "tasks", "records", "summary", "seconds"]
    assert bench["config"]["threads"] == 1 and bench["seconds"] > 0
    assert bench["schema"] == "paragen.bench/1"
    assert set(bench["environment"]) == ENV_KEYS and bench["environment"]["torch_threads"] == 1
    names = ["ar", "speculative", "lookup", "tree@static", "hf-greedy", "hf-assisted", "hf-lookup"]
    assert list(bench["contenders"]) == names == list(bench["summary"])
    assert bench["contenders"]["lookup"]["options"]["max_draft"] == 3  # the option reached the strategy
    assert bench["contenders"]["tree@static"]["options"]["shape"] == "static"  # and the variant's
    assert bench["contenders"]["lookup"]["model"] == str(other) and bench["contenders"]["ar"]["model"] == str(tiny)
    assert [t["id"] for t in bench["tasks"]] == ["HumanEval/0", "HumanEval/1"]
    assert len(bench["records"]) == 2 * len(names)
    for r in bench["records"]:
        assert set(r) == set(RECORD_TYPES)
        assert all(isinstance(r[k], t) for k, t in RECORD_TYPES.items()), r
        assert 1 <= len(r["tokens"]) == r["new_tokens"] <= 8
    for s in bench["summary"].values():
        assert set(s) == SUMMARY_KEYS and len(s["speedup_ci95"]) == 2

    summary = bench["summary"]
    # ar is the reference; every lossless strategy and peer reproduces it on the same weights.
    same_weights = [n for n in names if n != "lookup"]
    assert all(summary[n]["exact"] == 1.0 and not summary[n]["flagged"] for n in same_weights)
    # On other weights lookup differs from ar: non-exact, and flagged since it claims losslessness.
    assert summary["lookup"]["exact"] < 1.0 and summary["lookup"]["flagged"]
    assert summary["lookup"]["non_exact"] and summary["lookup"]["agree"] < 1.0
    assert summary["ar"]["tokens_per_call"] == 1.0 and summary["ar"]["speedup"] == 1.0
    # Draft statistics: static tree 4,2,2,1 has 44 nodes a call (fewer near the budget's end); the draft is the
    # target, so every drafted depth is accepted.
    assert summary["ar"]["drafted_per_call"] is None and summary["ar"]["acceptance"] is None
    assert 10 < summary["tree@static"]["drafted_per_call"] <= 44 and summary["tree@static"]["acceptance"] == [1.0] * 4
    assert summary["speculative"]["drafted_per_call"] <= 4 and summary["speculative"]["acceptance"][0] == 1.0
    # A draft identical to the target is always accepted: several tokens per target call.
    assert summary["speculative"]["tokens_per_call"] > 1.0 and summary["speculative"]["draft_calls"] > 0
    # Peer calls are counted with hooks: greedy generate makes one target call per token (plus one for EOS).
    for r in bench["records"]:
        if r["strategy"] == "hf-greedy":
            assert r["target_calls"] == r["new_tokens"] + (r["finish_reason"] == "eos")
            assert r["draft_calls"] == 0 and r["committed_per_call"] is None
        if r["strategy"] == "hf-assisted":
            assert r["draft_calls"] > 0
    assert summary["hf-greedy"]["committed_per_call"] is None

    # The table on stdout and the HTML report with its four plots (the fourth for the draft strategies).
    assert "| ar | 1.00 | 1.00 | 1.00 [1.00, 1.00] |" in stdout and "| hf-greedy (peer) |" in stdout
    assert "(!) lookup is lossless but differed from ar" in stdout
    assert stdout.splitlines()[0].endswith("| draft calls | drafted/call |")
    html = (out / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 4 and "drafted tokens per call" in html
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "report.html"]


def test_bench_runs_heads_strategies_and_reports_relaxed_ones_as_lossy(tiny_models, tmp_path, capsys):
    from paragen.heads import new_heads, save_heads

    tiny, _ = tiny_models
    heads = save_heads(new_heads(paragen.load(tiny), "medusa", 3), tmp_path / "heads")
    out = tmp_path / "out"
    rc = main(["bench", "--strategies", "blockwise,blockwise_relaxed,medusa", "--limit", "2", "--max-new-tokens", "8",
               "--model", str(tiny), "--heads", f"blockwise={heads}", "--heads", f"blockwise_relaxed={heads}",
               "--heads", f"medusa={heads}", "--option", "blockwise_relaxed:m=3", "--no-progress", "--out", str(out)])
    assert rc == 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["config"]["heads"][0] == ["blockwise", str(heads)]
    assert bench["contenders"]["blockwise_relaxed"]["lossless"] is False
    for name in ("blockwise", "medusa"):
        assert bench["contenders"][name]["lossless"] and bench["summary"][name]["exact"] == 1.0
    assert not bench["summary"]["blockwise_relaxed"]["flagged"]
    assert "| blockwise_relaxed (lossy) |" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_bench_compiles_every_graph_before_timing(tiny_models, tmp_path):
    """``--compile``: the warm-up compiles every bucket the contenders' calls can use (speculative
    feeds 5 tokens: buckets 1-8, causal and masked, on the target and the draft), and no graph
    compiles inside a timed run (torch's counters)."""
    tiny, other = tiny_models
    out = tmp_path / "compiled"
    assert main(["bench", "--strategies", "speculative,lookup", "--option", "lookup:max_draft=4", "--limit", "3",
                 "--max-new-tokens", "24", "--model", str(tiny), "--draft", str(other), "--compile", "--no-progress",
                 "--out", str(out)]) == 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["environment"]["compile_warmup"]["calls"] == 2 * 4 * 2
    assert bench["environment"]["graphs_compiled_in_timed_runs"] == 0
    assert all(bench["summary"][n]["exact"] == 1.0 for n in ("speculative", "lookup"))


def test_bfloat16_runs_score_quality_in_float32(tiny_models, tmp_path, capsys):
    tiny, _ = tiny_models
    config = BenchConfig(strategies=("ar", "lookup", "hf-greedy"), model=str(tiny), draft=str(tiny), dtype="bfloat16")
    models = load_models(config, build_contenders(config))
    assert models.target.dtype == torch.bfloat16 and models.hf_target.dtype == torch.bfloat16
    assert models.scorer.dtype == torch.float32
    out = tmp_path / "bf16"
    assert main(["bench", "--strategies", "lookup", "--limit", "1", "--max-new-tokens", "8", "--model", str(tiny),
                 "--dtype", "bfloat16", "--no-progress", "--out", str(out)]) == 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["config"]["dtype"] == "bfloat16"
    assert all(math.isfinite(r["gen_ppl"]) for r in bench["records"])
    with pytest.raises(SystemExit) as exit_:  # argparse: usage and the valid choices, exit 2
        main(["bench", "--dtype", "float16", "--out", str(tmp_path / "no")])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_loops_detects_short_periods_only():
    from paragen.bench.metrics import loops

    assert loops([1, 2, 3] * 30)  # period 3
    assert loops(list(range(20)) + [7] * 64)  # period 1 at the end
    assert not loops(list(range(100)))
    assert not loops([1, 2, 3] * 10)  # shorter than the 64-token window
    assert not loops(list(range(9)) * 10)  # period 9 > 8
    assert loops(list(range(9)) * 10, max_period=9)


def test_repeats_counts_statement_loops_that_loops_misses():
    from paragen.bench.metrics import STATEMENT_PERIOD, loops

    statement = tuple(range(100, 120))  # a 20-token line written over and over
    looping = tuple(range(30)) + statement * 5
    assert not loops(looping) and loops(looping, max_period=STATEMENT_PERIOD)
    assert not loops(tuple(range(33)) * 3, max_period=STATEMENT_PERIOD)  # period 33 > 32
    records = [rec("p1", "ar", looping, 100, 1.0), rec("p2", "ar", (7,) * 64, 64, 1.0),
               rec("p3", "ar", tuple(range(64)), 64, 1.0)]
    (s,) = summarize(records, {"ar": True}, set(), greedy=True, seed=0).values()
    assert (s.loops, s.repeats) == pytest.approx((1 / 3, 2 / 3))


def test_merge_labels_each_runs_rows(tmp_path):
    """Two runs merge into one table: ar once, every other row labelled with its run."""
    from paragen.bench.merge import merge
    from paragen.bench.report import bench_json

    for run, speedup in (("a", 2.0), ("b", 3.0)):
        summary = {name: dict(strategy=name, lossless=name == "ar", peer=False, prompts=1, new_tokens=4, target_calls=2,
                              draft_calls=0, seconds=1.0, tokens_per_call=2.0, tok_s=4.0,
                              speedup=1.0 if name == "ar" else speedup, speedup_ci95=[1.0, 1.0], exact=1.0,
                              non_exact=[], agree=1.0, gen_ppl=2.0, ast_ok=1.0, loops=0.0,
                              committed_per_call={"2": 2}, flagged=False)
                   for name in ("ar", "diffusion")}
        (tmp_path / run).mkdir()
        (tmp_path / run / "bench.json").write_text(bench_json({"config": {"task": "t"}, "summary": summary}))
    _, merged = merge([tmp_path / "a", tmp_path / "b"])
    assert list(merged) == ["ar", "diffusion[a]", "diffusion[b]"]
    assert merged["diffusion[b]"].speedup == 3.0 and merged["diffusion[a]"].committed_per_call == {2: 2}


def test_bench_on_a_users_prompt_file_explains_itself(tiny_models, tmp_path, capsys):
    """file:PATH prompts; bench.md beside the JSON; the HTML defines the metrics, shows each
    prompt's outputs collapsed, the total time and threads, warns about few prompts, and
    shows settings as typed (no JSON quotes)."""
    tiny, _ = tiny_models
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"id": "first", "prompt": "def add(a, b):"}\n\n{"prompt": "class <Point>:"}\n')
    out = tmp_path / "out"
    assert main(["bench", "--strategies", "lookup", "--task", f"file:{prompts}", "--max-new-tokens", "6",
                 "--model", str(tiny), "--option", "lookup:max_draft=3", "--threads", "2", "--no-progress",
                 "--out", str(out)]) == 0
    bench = json.loads((out / "bench.json").read_text())
    assert [t["id"] for t in bench["tasks"]] == ["first", "mine.jsonl/3"]
    assert bench["environment"]["torch_threads"] == 2 and torch.get_num_threads() == 1  # restored
    md = (out / "bench.md").read_text()
    assert md.startswith(f"# paragen bench: file:{prompts}\n") and "| lookup |" in md
    assert "2 torch thread(s)" in md and "Only 2 prompts" in md and "- **tok/call**: new tokens / target" in md
    page = (out / "report.html").read_text()
    assert page.count("<details>") == 2 and "&lt;Point&gt;" in page  # outputs collapsed, escaped
    assert "<dt>gen_ppl</dt>" in page and "total time" in page and "class='warn'>Only 2 prompts" in page
    assert "<td>options</td><td>lookup:max_draft=3</td>" in page and "<td>model</td><td>" + str(tiny) in page
    assert '&quot;' not in page.split("<h2>Settings</h2>")[1]


@pytest.mark.parametrize("text,suffix,message", [
    ("", ".txt", "holds no prompts"),
    ("not json\n", ".jsonl", "mine.jsonl:1: not JSON"),
    ('{"text": "x"}\n', ".jsonl", 'needs a "prompt" string'),
    ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', ".jsonl", "ids must be unique"),
])
def test_prompt_file_errors(tmp_path, text, suffix, message):
    from paragen.errors import InvalidInputError
    from paragen.tasks import get_task

    path = tmp_path / f"mine{suffix}"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=message):
        get_task(f"file:{path}")
    with pytest.raises(InvalidInputError, match="cannot read prompts"):
        get_task(f"file:{tmp_path / 'missing.txt'}")


def test_prompt_file_txt_is_one_prompt_per_line(tmp_path):
    from paragen.tasks import get_task

    path = tmp_path / "p.txt"
    path.write_text("def f(x):\n\n   \nimport os  \n")
    assert [(t.id, t.prompt) for t in get_task(f"file:{path}")] == [("p.txt/1", "def f(x):"), ("p.txt/4", "import os")]


def test_caveats_flag_few_prompts_and_wide_intervals(records):
    from paragen.bench.metrics import summarize
    from paragen.bench.report import caveats

    summary = summarize(records, {"ar": True, "fast": True, "rough": False, "buggy": True}, set(), True, 0)
    few = caveats({"tasks": [{}] * 3}, summary)
    assert few[0].startswith("Only 3 prompts")
    # rough's per-prompt ratios are 4 and 1: its interval is wide; fast's is [2, 2]
    assert "Wide speedup intervals" in few[1] and "rough [" in few[1] and "fast" not in few[1]
    assert not caveats({"tasks": [{}] * 40}, {"fast": summary["fast"]})


def test_loops_and_repeats_of_short_outputs_are_not_measured_and_the_report_says_why():
    from paragen.bench.report import bench_markdown

    short = (1, 2, 3, 4, 5, 6, 7, 8) * 4  # one statement five times would be the same: 32 tokens, no verdict
    records = [rec("p1", "ar", short, 32, 1.0), rec("p2", "ar", short[:20], 20, 1.0)]
    (s,) = summarize(records, {"ar": True}, set(), greedy=True, seed=0).values()
    assert (s.loops, s.repeats) == (None, None)
    assert markdown_table({"ar": s}).splitlines()[2].split(" | ")[8:10] == ["-", "-"]
    bench = {"config": {"task": "t"}, "tasks": [{}, {}], "records": [r.to_dict() for r in records]}
    assert "2 of 2 outputs are shorter than the 64 tokens loops and repeats look at: not measured (-)" in \
        bench_markdown(bench, {"ar": s})
    # one long output: the share is over the outputs that can be measured
    records.append(rec("p3", "ar", (7,) * 64, 64, 1.0))
    (s,) = summarize(records, {"ar": True}, set(), greedy=True, seed=0).values()
    assert (s.loops, s.repeats) == (1.0, 1.0)


def test_a_lossy_weight_format_labels_every_row_lossy_and_flags_none():
    weights = {"weights": "int8-weights (lossy)"}
    records = [rec("p1", "ar", (1, 2, 3), 3, 1.0, extra=weights), rec("p1", "lookup", (1, 2, 4), 2, 1.0, extra=weights)]
    s = summarize(records, {"ar": True, "lookup": True}, set(), greedy=True, seed=0)
    assert not s["lookup"].lossless and not s["lookup"].flagged  # rounding, not a bug, may change a near tie
    table = markdown_table(s)
    assert "| ar (lossy) |" in table and "| lookup (lossy) | 0.00 |" in table
    exact = [rec("p1", "ar", (1, 2, 3), 3, 1.0, extra={"weights": "fp16-weights"})]
    assert summarize(exact, {"ar": True}, set(), greedy=True, seed=0)["ar"].lossless


def test_an_unknown_task_lists_every_task_the_bench_takes(tmp_path, capsys):
    assert main(["bench", "--task", "nope", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("paragen: error: unknown task 'nope': choose one of humaneval, stdlib, repeat, "
                                       "file:PATH, speech[:DIR]\n")
