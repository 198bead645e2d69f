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
