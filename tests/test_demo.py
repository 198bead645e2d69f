"""``make demo`` end to end on the built-in models, short."""

from __future__ import annotations

import re

from paragen import demo


def test_demo_runs_every_strategy_on_the_builtin_models(capsys):
    assert demo.main(["--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    for name in ("ar", "speculative", "lookup", "jacobi", "lookahead"):
        assert re.search(rf"^{name} +8 +\d+ .* True$", out, re.M), name  # lossless: same tokens as ar
    assert re.search(r"^block_diffusion +\d+ .*lossy: \d+% of positions agree\)$", out, re.M)
    assert "== completion by block_diffusion ==" in out
    # speech: ctc_draft and ctc_tree transcribe exactly as ar, with or without the CTC weight
    runs = re.findall(r"^  (\S+) +(\d+) decoder calls +\d+ ms  (.*)$", out, re.M)
    assert len(runs) == 3 * len(demo.SPEECH_RUNS)
    for i in range(0, len(runs), len(demo.SPEECH_RUNS)):
        by = {label: text for label, _, text in runs[i : i + len(demo.SPEECH_RUNS)]}
        assert by["ctc_draft"] == by["ar"] and by["ctc_draft[ctc_weight=0.3]"] == by["ar[ctc_weight=0.3]"]
        assert by["ctc_tree[ctc_weight=0.3]"] == by["ar[ctc_weight=0.3]"]
