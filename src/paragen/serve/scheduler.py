"""The decoder thread: runs the engine's steps while there is work, and carries each
request's events to the event loop.

Requests are checked (``paragen.request.check_request``) before they get here; ``submit``
hands one to the engine (``engine.py``), which admits it into the running batch at a coming
step, and refuses it at once when ``max_queue`` requests wait already (the app answers 429).
Between steps the engine drops rows whose client has gone (``cancel``, set when the client
disconnects) or whose deadline has passed. Pieces cross to the event loop through
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from paragen.driver import Generation
from paragen.models.base import Model
from paragen.request import Request
from paragen.serve.engine import CacheBudgetError, Engine, Entry, Group, QueueFull
from paragen.serve.metrics import Metrics

log = logging.getLogger("paragen.serve")

__all__ = ["CacheBudgetError", "Job", "QueueFullError", "Scheduler"]


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests already."""


@dataclass
class Job:
    """One request's decode and where its events go: ``("piece", str)`` any number of times, then
    one of ``("done", Generation)``, ``("timeout", None)``, ``("error", ParagenError)``, ``("failed", Exception)``."""

    request: Request
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() after which the decode stops between steps
    arrived: float = field(default_factory=time.monotonic)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    entry: Entry | None = None
    last_piece: float | None = None  # when the latest piece was emitted (None: none yet)

    def emit(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop has closed (server shutting down): nobody is listening
            pass


class Scheduler:
    """Runs the engine on a daemon thread; ``submit`` refuses when ``max_queue`` wait already."""

    def __init__(self, model: Model, metrics: Metrics | None, max_queue: int, max_batch: int = 8,
                 cache_tokens: int | None = None, prefill_tokens: int = 2048, speculation: bool = True) -> None:
        self.metrics = metrics
        self.engine = Engine(model, max_batch=max_batch, cache_tokens=cache_tokens, prefill_tokens=prefill_tokens,
                             max_waiting=max_queue, speculation=speculation)
        self.engine.on_step = self._stepped
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="paragen-decoder", daemon=True)

    @property
    def queue_depth(self) -> int:
        return self.engine.queued

    @property
    def in_flight(self) -> int:
        return self.engine.running

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current step and join the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Hand a checked request to the engine. ``QueueFullError`` (429) or ``CacheBudgetError`` (400)."""
        def emit(kind: str, value: Any) -> None:
            self._observe(job, kind, value)
            job.emit(kind, value)

        job.entry = Entry(job.request, emit, deadline=job.deadline, arrived=job.arrived)
        with self._cv:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            try:
                self.engine.add(job.entry)
            except QueueFull as e:
                raise QueueFullError(str(e)) from None
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: dropped from the queue now if it waits, from its batch at the next step if it runs."""
        if job.entry is not None and not job.entry.cancelled and self.engine.cancel(job.entry):
            self._record("cancelled" if time.monotonic() <= job.deadline else "timeout")

    def _run(self) -> None:
        while True:
            with self._cv:
                while self.engine.idle and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
            self.engine.step()

    def _observe(self, job: Job, kind: str, value: Any) -> None:
        """Metrics from a request's events, on the decoder thread."""
        if self.metrics is None:
            return
        now = time.monotonic()
        if kind == "piece":
            if job.last_piece is None:
                self.metrics.first(now - job.arrived)
            else:
                self.metrics.inter_token(now - job.last_piece)
            job.last_piece = now
        elif kind == "done":
            assert isinstance(value, Generation)
            self.metrics.decoded(value.stats)
            self._record("finished")
        elif kind in ("cancelled", "timeout", "error", "failed"):
            self._record(kind)

    def _stepped(self, group: Group, rows: int, drafted: bool) -> None:
        if self.metrics:
            self.metrics.step(group.request.strategy.name, rows, drafted if group.draftable else None)

    def _record(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.outcome(outcome)
