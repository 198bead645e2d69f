"""``make demo`` end to end on the built-in models, short."""

from __future__ import annotations

import re

from paragen import demo


def test_demo_runs_every_strategy_on_the_builtin_models(capsys):
    assert demo.main(["--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    for name in ("ar", "speculative", "lookup", "jacobi", "lookahead"):
        assert re.search(rf"^{name} +8 +\d+ .* True$", out, re.M), name  # lossless: same tokens as ar
    ppl = dict(re.findall(r"^(\w+) +\d+ +\d+ +[\d.]+ +[\d.]+ +[\d.]+x +([\d.]+) ", out, re.M))
    for name in ("block_diffusion", "diffusion"):
        assert re.search(rf"^{name} +\d+ .*lossy: \d+% of positions agree\)$", out, re.M), name
        assert f"== completion by {name} ==" in out
        assert float(ppl[name]) >= 1.0
    assert ppl["speculative"] == ppl["ar"]  # the same text, so the same perplexity under code-target
    # infilling: the hole, then ar's guess and the diffusion model's fill, each with its calls
    hole = re.search(r"^hole +'(.*)'$", out, re.M)
    assert hole and hole.group(1) == "return number % 1.0"  # HumanEval/2's one-line solution
    for label in ("ar, sees the code before only", "diffusion, sees both sides"):
        assert re.search(rf"^{label} +'.*'  \(\d+ calls, \d+ ms, (exact|differs)\)$", out, re.M), label
    # speech: ctc_draft and ctc_tree transcribe exactly as ar, with or without the CTC weight
    runs = re.findall(r"^  (\S+) +(\d+) decoder calls +\d+ ms  (.*)$", out, re.M)
    assert len(runs) == 3 * len(demo.SPEECH_RUNS)
    for i in range(0, len(runs), len(demo.SPEECH_RUNS)):
        by = {label: text for label, _, text in runs[i : i + len(demo.SPEECH_RUNS)]}
        assert by["ctc_draft"] == by["ar"] and by["ctc_draft[ctc_weight=0.3]"] == by["ar[ctc_weight=0.3]"]
        assert by["ctc_tree[ctc_weight=0.3]"] == by["ar[ctc_weight=0.3]"]
