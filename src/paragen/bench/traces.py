"""``paragen bench --trace STRATEGY``: a trace page for each prompt of one strategy, linked from the report.

The traces are recorded in a separate pass after the timed runs, so tracing never touches
the measured seconds; each prompt is decoded as in the timed run (same models, options and
seed), and its page is written to ``OUT/traces/<n>.html`` (``paragen.trace_html``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from paragen.bench.run import BenchResult, load_models
from paragen.errors import InvalidInputError
from paragen.trace_html import write


def write_traces(result: BenchResult, strategy: str, out: Path) -> dict[str, str]:
    """Trace ``strategy`` on every prompt of ``result``; {task id: page path relative to ``out``}."""
    import paragen

    config = result.config
    found = [c for c in result.contenders if c.name == strategy]
    if not found or found[0].peer:
        names = ", ".join(c.name for c in result.contenders if not c.peer)
        raise InvalidInputError(f"--trace {strategy}: not a paragen strategy of this run (choose from {names})")
    c = found[0]
    models = load_models(config, [c])
    target = models.own.get(c.name, models.target)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    pages = {}
    for i, prompt in enumerate(result.prompts):
        gen = paragen.generate(target, list(prompt.ids), c.cls.name, max_new_tokens=config.max_new_tokens,
                               temperature=config.temperature, top_p=config.top_p, seed=config.seed + i,
                               draft=models.draft if c.needs_draft else None, heads=models.heads.get(c.name),
                               trace=True, **dataclasses.asdict(c.options))
        page = Path("traces") / f"{i:04d}.html"
        write(gen.trace, out / page, title=f"{strategy} on {prompt.task.id}")
        pages[prompt.task.id] = page.as_posix()
    return pages
