"""The decoding side of ``paragen batch``: a checked row, the job's settings and plan, and the
``Decoder`` that turns rows into output records, in this process (``paragen.batch``) or inside
a Ray actor (``paragen.cluster.batch``). Both import it; it imports neither.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from paragen.errors import InvalidInputError


@dataclass(frozen=True)
class Row:
    """One checked input line: its id, its 1-based line number, and its decoding settings."""

    id: str | int
    line: int
    prompt: str
    max_tokens: int
    temperature: float
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def group(self) -> tuple[Any, ...]:
        """Rows of one group can share a ``generate`` call (one max_new_tokens, temperature and
        stop list per call; seeds are per row, but a call's seeds are all set or all unset)."""
        return self.max_tokens, self.temperature, self.stop, self.seed is None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Row:
        d = json.loads(text)
        return Row(**{**d, "stop": tuple(d["stop"])})


@dataclass(frozen=True)
class JobSettings:
    """What every decoder needs to build itself: the model, its load arguments, and defaults
    for the rows that set none. Plain data, so a Ray actor can be built from it elsewhere."""

    model: str
    load: dict[str, Any] = field(default_factory=dict)  # paragen.load's keyword arguments
    draft: str | None = None
    strategy: str = "ar"
    options: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 128  # a row's default max_tokens
    temperature: float = 0.0  # a row's default temperature
    batch_size: int = 16  # rows per generate call (1 for strategies that decode one prompt)
    threads: int = 1  # torch threads of each decoder

    def __post_init__(self) -> None:
        from paragen.request import MAX_BATCH

        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InvalidInputError(f"--batch-size {self.batch_size}: give 1 to {MAX_BATCH} rows")
        if self.threads < 1:
            raise InvalidInputError(f"--threads must be at least 1, got {self.threads}")


@dataclass(frozen=True)
class JobPlan:
    """Where the rows go: ``ray`` None decodes here; else a Ray address (local, auto, host:port)
    and ``workers`` actors, each loading the model once."""

    input: str
    output: str
    on_error: str = "fail"  # "fail": any bad line stops the job before it starts; "skip": decode the good rows
    shard_rows: int = 256  # rows per shard: what a crash can lose, and files per job
    ray: str | None = None
    workers: int = 1
    progress: bool = True


class Decoder:
    """Loads the models once (on its own torch threads), then decodes lists of rows with
    batched ``generate``; the same object runs in this process or inside a Ray actor."""

    def __init__(self, settings: JobSettings, model: Any = None, draft: Any = None) -> None:
        import paragen
        from paragen.cache import OneRowCache
        from paragen.strategies import get_strategy

        self.settings = settings
        self.model = model if model is not None else paragen.load(settings.model, **settings.load)
        self.draft = draft if draft is not None or not settings.draft else paragen.load(settings.draft, **settings.load)
        # a strategy that decodes one prompt at a time, or a backend whose cache has one length (hf), gets rows one by one
        one_row = isinstance(self.model.new_cache(batch=1, max_length=1), OneRowCache)
        self.batch = settings.batch_size if get_strategy(settings.strategy).batched and not one_row else 1

    def decode(self, rows: list[Row]) -> list[dict[str, Any]]:
        """One output record per row, grouped into ``generate`` calls of up to ``batch_size`` rows."""
        import paragen

        groups: dict[tuple[Any, ...], list[Row]] = {}
        for row in rows:
            groups.setdefault(row.group(), []).append(row)
        records = []
        for group in groups.values():
            for i in range(0, len(group), self.batch):
                chunk = group[i:i + self.batch]
                first = chunk[0]
                seeds = None if first.seed is None else [r.seed for r in chunk]
                gens = paragen.generate(self.model, [r.prompt for r in chunk], self.settings.strategy,
                                        max_new_tokens=first.max_tokens, temperature=first.temperature, seed=seeds,
                                        stop=list(first.stop) or None, draft=self.draft, **self.settings.options)
                records += [{"id": r.id, **g.to_dict()} for r, g in zip(chunk, gens)]
        return records


def local_results(decoder: Decoder, rows: list[Row], shard_rows: int) -> Iterator[list[dict[str, Any]]]:
    """In-process decoding: the records of ``shard_rows`` rows at a time."""
    for i in range(0, len(rows), shard_rows):
        yield decoder.decode(rows[i:i + shard_rows])
