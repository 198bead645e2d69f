"""``paragen batch --ray``: the rows left to decode, on a Ray Data actor pool.

``ray.data.from_items`` (the rows, each as its JSON: the input was read and checked line by
line on this machine, so Ray gets rows known to be good, not the raw file whose bad lines
``--on-error skip`` drops) -> ``map_batches`` over ``workers`` actors, each building one
``Decoder`` (the model loads once per actor) -> the records stream back here, where
``paragen.batch`` writes them to shards. Writing here, not from the actors, keeps one writer
that knows every id written: a task that Ray retries after losing its actor may return rows
a second time, and the writer drops them, so each row is written once.

Lost workers: an actor that dies (its process killed, its node gone) is restarted by Ray and
its unfinished task run again: Ray Data's defaults for actor pools (``max_restarts`` and
``max_task_retries`` -1, no limit), which paragen keeps, because a job of hours should
outlive any number of lost workers; a bug that kills every actor shows up as a job that
makes no progress, and Ctrl-C then keeps the shards written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from paragen.batch_decode import Decoder, JobPlan, JobSettings, Row
from paragen.cluster import ray_cluster

BLOCKS_PER_WORKER = 4  # blocks a worker gets, at least: work to balance, and little lost with a lost actor


class RowDecoder:
    """A Ray Data actor: a ``Decoder`` built once; called with batches of rows as JSON strings."""

    def __init__(self, settings: JobSettings) -> None:
        import torch

        torch.set_num_threads(settings.threads)  # the actor's own process: its thread count is its own
        self.decoder = Decoder(settings)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        rows = [Row.from_json(text) for text in batch["row"]]
        return {"record": [json.dumps(r) for r in self.decoder.decode(rows)]}


def ray_results(todo: list[Row], settings: JobSettings, plan: JobPlan) -> Iterator[list[dict[str, Any]]]:
    """The records of ``todo``, a block at a time as the actors finish them (in no fixed order)."""
    assert plan.ray is not None
    with ray_cluster(plan.ray) as ray:
        from ray.data import ActorPoolStrategy, DataContext

        # Ray Data's own progress bars would interleave with paragen's (rows/s, tokens/s, ETA).
        DataContext.get_current().enable_progress_bars = False
        # Rows are JSON strings: ids may mix strings and integers, which an Arrow column refuses.
        blocks = min(len(todo), max(plan.workers * BLOCKS_PER_WORKER, math.ceil(len(todo) / plan.shard_rows)))
        ds = ray.data.from_items([{"row": row.to_json()} for row in todo], override_num_blocks=blocks)
        ds = ds.map_batches(RowDecoder, fn_constructor_kwargs={"settings": settings}, batch_size=None,
                            compute=ActorPoolStrategy(size=plan.workers), num_cpus=settings.threads)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            yield [json.loads(text) for text in batch["record"]]
