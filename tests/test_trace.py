"""Traces: consistent with the result for every strategy and speech decoder, output unchanged by
tracing, one trace per row of a batch, clear errors for bad files, the terminal view, and the
HTML page in a real browser (headless Chromium; skipped with a message where it is absent)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

import paragen
from paragen.speech.api import decode_features
from paragen.speech.decode import DECODERS
from paragen.strategies import STRATEGIES
from paragen.trace import SCHEMA, TREE_KINDS, Call, Trace, TraceError
from paragen.trace_html import render
from paragen.trace_view import completion, show
from tests.helpers import NO_DRAFTS, stats_case, tiny_speech

PROMPT = [1, 2, 3, 1, 2, 3, 1, 2, 4]


def kept(trace: Trace) -> list[int]:
    return [t for c in trace.calls for t in c.committed[: c.kept]]


def check_consistent(gen, name: str) -> None:
    """The invariants every trace keeps with its Generation."""
    t, s = gen.trace, gen.stats
    assert t.strategy == name and t.schema == SCHEMA
    assert kept(t) == gen.tokens == t.tokens  # the calls' kept commits are the output
    assert len(t.calls) == s.target_calls == sum(c.target_calls for c in t.calls)
    assert sum(c.draft_calls for c in t.calls) == s.draft_calls
    for c in t.calls:
        assert 0 <= c.kept <= len(c.committed)
        assert min(c.draft_s, c.verify_s, c.other_s) >= 0
        if c.kind in TREE_KINDS:
            assert len(c.parents) == len(c.tokens)
            assert all(-1 <= p < i for i, p in enumerate(c.parents))  # parents come first
            path = c.accepted  # a root path: the root's child, then each node's child
            assert [c.parents[n] for n in path] == [-1, *path][: len(path)]
            assert c.committed[: len(path)] == [c.tokens[n] for n in path]
            assert len(c.committed) == len(path) + 1  # and the target's own token
            if c.p is not None:
                assert len(c.p) == len(c.tokens) and all(0 <= x <= 1 for x in c.p)
        else:
            assert set(c.accepted) <= set(range(len(c.tokens)))
    if name not in NO_DRAFTS:  # the stats' acceptance per position is the trace's
        depth = lambda c: max(_depths(c.parents), default=0)  # noqa: E731
        proposed = [sum(depth(c) > d for c in t.calls) for d in range(len(s.extra["proposed"]))]
        accepted = [sum(len(c.accepted) > d for c in t.calls) for d in range(len(s.extra["accepted"]))]
        assert proposed == s.extra["proposed"] and accepted == s.extra["accepted"]
    if name in ("diffusion", "block_diffusion"):
        unmasked = {}
        for c in t.calls:
            unmasked[len(c.accepted)] = unmasked.get(len(c.accepted), 0) + 1
        assert unmasked == s.extra["unmasked_per_call"]
    again = Trace.from_dict(json.loads(t.to_json()))  # JSON round trip
    assert again.to_dict() == t.to_dict()


def _depths(parents: list[int]) -> list[int]:
    out: list[int] = []
    for p in parents:
        out.append(1 if p < 0 else out[p] + 1)
    return out


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_traces_what_it_did_and_tracing_changes_nothing(name, sampled):
    cls = STRATEGIES[name]
    if sampled and not cls.supports_sampling:
        pytest.skip(f"{name} is greedy-only")
    model, kw = stats_case(name, seed=1)
    if name == "auto":  # its choices follow measured time, so a seed alone does not fix its sample: a fixed plan does
        kw["schedule"] = "ar:1,lookup:2"
    args = dict(max_new_tokens=24, temperature=1.0 if sampled else 0.0, seed=5, **kw)
    plain = paragen.generate(model, PROMPT, name, **args)
    traced = paragen.generate(model, PROMPT, name, trace=True, **args)
    assert plain.trace is None
    assert traced.tokens == plain.tokens  # tracing draws nothing and changes no decision
    check_consistent(traced, name)


def test_a_cut_step_keeps_only_what_the_row_kept():
    """EOS and the budget drop the end of a step's commit: ``kept`` says how much stayed."""
    from tests.helpers import EOS_MODEL

    for n in (1, 5, 13):
        gen = paragen.generate(EOS_MODEL, [1, 2, 1, 2], "lookahead", max_new_tokens=n, trace=True)
        check_consistent(gen, "lookahead")


@pytest.mark.parametrize("name", ["ar", "speculative", "eagle", "lookup"])
def test_a_batch_gets_one_trace_per_row_equal_to_the_row_alone(name):
    model, kw = stats_case(name, seed=0)
    prompts = [PROMPT, [5, 6], [7, 8, 9, 7, 8]]
    rows = paragen.generate(model, prompts, name, max_new_tokens=20, trace=True, **kw)
    for prompt, gen in zip(prompts, rows):
        alone = paragen.generate(model, prompt, name, max_new_tokens=20, trace=True, **kw)
        assert gen.trace.prompt == prompt
        check_consistent(gen, name)
        assert [c.committed for c in gen.trace.calls] == [c.committed for c in alone.trace.calls]
        assert [c.accepted for c in gen.trace.calls] == [c.accepted for c in alone.trace.calls]


@pytest.mark.parametrize("name,options", [(n, {}) for n in sorted(DECODERS)] + [
    ("cass_nat", {"samples": 4, "threshold": 1.0}), ("cass_nat", {"samples": 4, "threshold": 1.0, "rescore": "nar"}),
    ("mask_predict", {"init": "ctc", "threshold": 1.0}), ("ar", {"ctc_weight": 0.3}), ("ctc_draft", {"ctc_weight": 0.3})])
def test_speech_decoders_trace_every_decoder_call(name, options):
    from paragen.speech.api import options_for

    model = tiny_speech(0, eos_bias=2.0)
    feats = torch.randn(60, 80, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opts = options_for(name, options)
    plain = decode_features(model, feats, name, opts)
    out = decode_features(model, feats, name, opts, trace=True)
    t = out.trace
    assert out.tokens == plain.tokens and plain.trace is None
    assert kept(t) == out.tokens == t.tokens
    assert sum(c.target_calls for c in t.calls) == out.stats.decoder_calls
    assert len(t.meta["frames"]["labels"]) == len(t.meta["frames"]["probs"]) > 0  # encoder frames (subsampled)
    for c in t.calls:
        if c.kind == "chain":
            path = c.accepted
            assert [c.parents[n] for n in path] == [-1, *path][: len(path)]
    assert Trace.from_dict(json.loads(t.to_json())).to_dict() == t.to_dict()


def test_bad_trace_files_are_one_clear_error(tmp_path):
    cases = {"not.json": "{nope", "list.json": "[1, 2]", "old.json": json.dumps({"schema": "paragen.trace/0"}),
             "calls.json": json.dumps({"schema": SCHEMA, "strategy": "ar", "prompt": [1], "tokens": [],
                                       "calls": [{"kind": "warp", "source": "x"}]}),
             "fields.json": json.dumps({"schema": SCHEMA, "strategy": "ar"})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TraceError) as e:
            Trace.load(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(TraceError, match="cannot read"):
        Trace.load(tmp_path / "missing.json")
    from paragen.cli import main

    assert main(["trace", "show", str(tmp_path / "old.json")]) == 2


def small_trace(name: str = "speculative", n: int = 24) -> Trace:
    """A real trace; ``speculative``'s draft is the target itself, so its proposals are accepted."""
    model, kw = stats_case(name, seed=1)
    if name == "speculative":
        kw["draft"] = model
    return paragen.generate(model, PROMPT, name, max_new_tokens=n, trace=True, **kw).trace


def test_terminal_view_colours_spans_and_brackets_them_without_colour():
    t = small_trace()
    t.pieces = {i: f"<{i}>" for i in range(64)}
    plain = completion(t, color=False)
    assert plain.replace("[", "").replace("]", "").replace("|", "") == "".join(f"<{x}>" for x in t.tokens)
    assert plain.count("[") == sum(1 for c in t.calls if c.kept)
    colored = completion(t, color=True)
    assert "\x1b[42;30m" in colored and "[" not in colored.replace("\x1b[", "")
    out = io.StringIO()
    show(t, out, calls=True)  # a StringIO is not a terminal: no colour
    assert "\x1b[" not in out.getvalue() and len(out.getvalue().splitlines()) == 3 + len(t.calls)


def test_generate_show_and_trace_files_from_the_cli(model_dir, tmp_path, capsys, monkeypatch):
    from paragen.cli import main

    monkeypatch.setenv("NO_COLOR", "1")
    args = ["generate", "def f", "--model", str(model_dir), "--strategy", "lookup", "--max-new-tokens", "12"]
    assert main([*args, "--show", "--show-calls", "--trace-json", str(tmp_path / "t.json"),
                 "--show-html", str(tmp_path / "t.html")]) == 0
    lines = capsys.readouterr().out.splitlines()
    trace = Trace.load(tmp_path / "t.json")
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["call", "kind/source"])
    assert len(lines) == header + 1 + len(trace.calls)  # NO_COLOR: brackets, no escapes
    assert lines[0].startswith("each call's span") and "[" in lines[1] and not any("\x1b[" in x for x in lines)
    assert main(["trace", "show", str(tmp_path / "t.json"), "-o", str(tmp_path / "again.html")]) == 0
    assert (tmp_path / "again.html").read_text() == (tmp_path / "t.html").read_text()
    assert main(["trace", "print", str(tmp_path / "t.json")]) == 0


def test_the_page_is_self_contained_and_escapes_the_trace():
    t = small_trace()
    t.pieces[t.tokens[0]] = "</script><script>alert(1)</script><!--"
    page = render(t)
    assert "alert(1)</script>" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and " src=" not in page
    assert page.count("</script>") == 2  # the data block and the code


def large_trace(tokens: int = 2048) -> Trace:
    """A synthetic 2,048-token tree trace (about 700 calls of 16-node trees)."""
    g = torch.Generator().manual_seed(0)
    calls, out = [], []
    while len(out) < tokens:
        parents = [-1, -1, -1, 0, 0, 1, 3, 3, 6, 6, 8, 8, 10, 11, 12, 12]
        toks = torch.randint(0, 500, (16,), generator=g).tolist()
        path = [0, 3, 6][: int(torch.randint(0, 4, (1,), generator=g))]
        committed = [toks[n] for n in path] + [7]
        calls.append(Call("tree", "draft", toks, parents, path, p=[0.5] * 16, committed=committed, kept=len(committed),
                          draft_s=1e-3, verify_s=2e-3, other_s=1e-4))
        out += committed
    t = Trace("eagle", [1, 2, 3], calls, tokens=out, pieces={i: f"t{i} " for i in range(500)})
    return t


# ---------------------------------------------------------------- the page in a real browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Chromium is absent: apt-get install chromium chromium-driver (CI installs them)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="paragen-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(browser, trace: Trace, tmp_path: Path, name: str, call: int = 1):
    path = tmp_path / f"{name}.html"
    path.write_text(render(trace), encoding="utf-8")
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path.as_uri() + f"#call={call}")
    return path


def errors(browser) -> list:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE" or e["source"] == "console-api"]


def shown_call(browser) -> int:
    return int(browser.execute_script("return document.body.dataset.call"))


def canvas_ink(browser, element: str) -> int:
    """Non-white pixels of a canvas."""
    return browser.execute_script(f"""
        const c = document.getElementById('{element}'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240) n++;
        return n;""")


@pytest.mark.slow
def test_page_steps_through_a_tree_trace(browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, small_trace("eagle", 40), tmp_path, "eagle", call=2)
    assert shown_call(browser) == 1
    info = browser.find_element(By.ID, "info").text
    nodes = len(browser.find_elements(By.CSS_SELECTOR, "#tree g.node"))
    assert nodes > 1 and "tree from eagle" in info
    browser.find_element(By.ID, "next").click()
    assert shown_call(browser) == 2 and browser.find_element(By.ID, "info").text != info
    assert browser.find_elements(By.CSS_SELECTOR, "#tree g.node.root")
    browser.find_element(By.ID, "last").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#text .call.future") == []
    assert errors(browser) == []
    png = browser.get_screenshot_as_png()
    Image = pytest.importorskip("PIL.Image")
    img = Image.open(io.BytesIO(png)).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100 and len(img.getcolors(1 << 16) or []) > 20  # not blank


@pytest.mark.slow
def test_page_draws_the_diffusion_canvas_filling_in(browser, tmp_path):
    t = small_trace("block_diffusion", 24)
    open_page(browser, t, tmp_path, "block", call=1)
    first = canvas_ink(browser, "canvas")
    assert first > 0
    browser.execute_script("document.getElementById('last').click()")
    assert shown_call(browser) == len(t.calls) - 1
    assert canvas_ink(browser, "canvas") != first
    assert errors(browser) == []


@pytest.mark.slow
def test_page_of_a_speech_trace_draws_frames(browser, tmp_path):
    model = tiny_speech(0, eos_bias=2.0)
    feats = torch.randn(60, 80, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("cass_nat", "ctc_draft", "mask_predict"):
        out = decode_features(model, feats, name, trace=True)
        open_page(browser, out.trace, tmp_path, name)
        assert canvas_ink(browser, "frames") > 0
        assert errors(browser) == []


@pytest.mark.slow
def test_a_2048_token_page_opens_and_steps_quickly(browser, tmp_path):
    from selenium.webdriver.common.by import By

    t = large_trace()
    open_page(browser, t, tmp_path, "large")
    assert errors(browser) == []
    start = time.perf_counter()
    browser.execute_script("for (let i = 0; i < 200; i++) document.getElementById('next').click();")
    steps = time.perf_counter() - start
    assert shown_call(browser) == 200
    browser.find_element(By.ID, "last").click()
    assert shown_call(browser) == len(t.calls) - 1
    assert steps < 10, f"200 steps took {steps:.1f} s"
    assert errors(browser) == []


def test_bench_links_a_trace_page_per_prompt(model_dir, tmp_path, capsys):
    from paragen.cli import main

    out = tmp_path / "o"
    rc = main(["bench", "--strategies", "lookup", "--task", "humaneval", "--limit", "2", "--max-new-tokens", "6",
               "--model", str(model_dir), "--threads", "1", "--no-progress", "--trace", "lookup", "--out", str(out)])
    assert rc == 0
    bench = json.loads((out / "bench.json").read_text())
    pages = [t["trace"] for t in bench["tasks"]]
    report = (out / "report.html").read_text()
    assert len(pages) == 2 and all((out / p).exists() and f"href='{p}'" in report for p in pages)
    assert main(["bench", "--strategies", "lookup", "--task", "humaneval", "--limit", "1", "--max-new-tokens", "2",
                 "--model", str(model_dir), "--no-progress", "--trace", "jacobi", "--out", str(out)]) == 2
    assert "--trace jacobi" in capsys.readouterr().err


@pytest.mark.slow
def test_transcribe_writes_a_trace_page(tmp_path, capsys):
    from paragen.cli import main

    wav = Path(paragen.__file__).parent / "builtin" / "speech-en" / "sample-1.wav"
    if not wav.exists():
        pytest.skip("the built-in speech model is not installed")
    args = ["transcribe", str(wav), "--strategy", "ctc_draft"]
    assert main([*args, "--trace-json", str(tmp_path / "t.json"), "--show-html", str(tmp_path / "t.html")]) == 0
    trace = Trace.load(tmp_path / "t.json")
    assert trace.text == capsys.readouterr().out.strip() and (tmp_path / "t.html").stat().st_size > 10_000
    assert main(["transcribe", str(wav), str(wav), "--trace-json", str(tmp_path / "u.json")]) == 2
    assert "one audio file" in capsys.readouterr().err


@pytest.mark.slow
def test_a_trace_without_calls_still_opens(browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, Trace("mask_predict", [], tokens=[]), tmp_path, "empty")
    assert browser.find_element(By.ID, "step").text == "no calls"
    assert errors(browser) == []
