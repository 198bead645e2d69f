"""The draft statistics every strategy that verifies guesses keeps in ``Stats.extra``.

Whatever proposes the guesses (a draft model, prediction heads, a feature drafter, n-grams
copied from the context, a Jacobi window, a lookahead n-gram pool), one verified step adds:

- ``proposed[d]``: 1 if the step verified a guess at draft position d (a chain of k guesses
  reaches positions 0..k-1; a tree or a set of candidates reaches its deepest one);
- ``accepted[d]``: 1 if the accepted prefix covers position d (the target's bonus token
  after it is not a guess and is not counted);
- ``nodes``: the guessed tokens the target verified (a chain's length, a tree's nodes, all
  candidates' tokens), i.e. what the step fed beyond the newest token to check guesses.

So ``proposed[d] >= accepted[d] >= 0`` and ``accepted[d] / proposed[d]`` is the acceptance
rate at position d; ``sum(accepted)`` is the number of guessed tokens committed. The bench
(``drafted/call``, acceptance per position), the server's ``/metrics`` and ``paragen generate
--stats`` all read these three fields.
"""

from __future__ import annotations

from typing import Any


def new_counts() -> dict[str, Any]:
    """A row's draft statistics before its first step."""
    return {"proposed": [], "accepted": [], "nodes": 0}


def add_counts(total: dict[str, Any], extra: dict[str, Any]) -> None:
    """Add another record's counts into ``total`` (a strategy made of others sums theirs);
    a record without counts (``ar``'s) adds nothing."""
    if "proposed" not in extra:
        return
    for key in ("proposed", "accepted"):
        n = max(len(total[key]), len(extra[key]))
        total[key] = [a + b for a, b in zip(total[key] + [0] * n, extra[key] + [0] * n)][:n]
    total["nodes"] += extra["nodes"]


def count_step(extra: dict[str, Any], depth: int, accepted: int, nodes: int) -> None:
    """Add one verified step: guesses reached ``depth`` positions, the first ``accepted`` of
    them were accepted (``accepted <= depth``), ``nodes`` guessed tokens were verified."""
    for key in ("proposed", "accepted"):
        extra[key] += [0] * (depth - len(extra[key]))
    for d in range(depth):
        extra["proposed"][d] += 1
        extra["accepted"][d] += int(d < accepted)
    extra["nodes"] += nodes
