"""One decoder thread behind a bounded queue.

Batched decoding does not exist yet, so requests are decoded one at a time, in arrival
order, by a single worker thread that runs ``paragen.stream``; requests beyond the one
being decoded wait in a queue of at most ``max_queue``, and a request that finds it full is
refused at once (the app answers 429). The decode is a generator, so stopping it is simply
not pulling the next piece: between pieces the worker checks the request's cancel flag
(set when the client disconnects) and its deadline, and closes the generator, which
releases its cache. Pieces cross to the event loop through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import paragen
from paragen.errors import ParagenError
from paragen.models.base import Model
from paragen.serve.metrics import Metrics

log = logging.getLogger("paragen.serve")


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests already."""


@dataclass
class Job:
    """One request's decode: the keyword arguments of ``paragen.stream`` and where its events go.

    Events, in order: ``("piece", str)`` any number of times, then one of ``("done", Generation)``,
    ``("error", ParagenError)``, ``("timeout", None)``, ``("failed", Exception)``.
    """

    kwargs: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    deadline: float  # time.monotonic() after which the decode stops between steps
    arrived: float = field(default_factory=time.monotonic)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def ending(self) -> str:
        """Why a job stopped early: its deadline passed (the handler may have seen it first), or its client left."""
        return "timeout" if time.monotonic() > self.deadline else "cancelled"

    def emit(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop has closed (server shutting down): nobody is listening
            pass


class Scheduler:
    """Runs jobs one at a time on a daemon thread; ``submit`` refuses when ``max_queue`` wait already."""

    def __init__(self, model: Model, metrics: Metrics | None, max_queue: int) -> None:
        self.model, self.metrics, self.max_queue = model, metrics, max_queue
        self._waiting: deque[Job] = deque()
        self._current: Job | None = None
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="paragen-decoder", daemon=True)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return int(self._current is not None)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything, let the worker finish its current step, and join it."""
        with self._cv:
            self._stopping = True
            for job in (*self._waiting, *([self._current] if self._current else [])):
                job.cancelled.set()
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are waiting already")
            self._waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job: dropped from the queue now if it waits, stopped between steps if it runs."""
        job.cancelled.set()
        with self._cv:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running or finished: the worker sees the flag
        self._record(job.ending())

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job = self._current = self._waiting.popleft()
            try:
                self._decode(job)
            finally:
                with self._cv:
                    self._current = None

    def _decode(self, job: Job) -> None:
        if self.metrics:
            self.metrics.waited(time.monotonic() - job.arrived)
        pieces: Iterator[str] | None = None
        try:
            pieces = paragen.stream(self.model, **job.kwargs)
            first = True
            while True:
                # checked before every step: the decode never starts or continues for nobody
                if job.cancelled.is_set() or time.monotonic() > job.deadline:
                    self._record(job.ending())
                    job.emit("timeout")  # heard only if the client is still there, i.e. on a timeout
                    return
                try:
                    piece = next(pieces)
                except StopIteration as done:
                    if self.metrics:
                        self.metrics.decoded(done.value.stats)
                    self._record("finished")
                    job.emit("done", done.value)
                    return
                if first and self.metrics:
                    self.metrics.first(time.monotonic() - job.arrived)
                first = False
                job.emit("piece", piece)
        except ParagenError as e:  # bad input the API found (greedy-only strategy asked to sample, ...)
            self._record("error")
            job.emit("error", e)
        except Exception as e:  # a bug: logged here with its traceback, never sent to the client
            log.exception("decode failed")
            self._record("failed")
            job.emit("failed", e)
        finally:
            if pieces is not None:
                pieces.close()  # GeneratorExit in the decode loop: its cache and tensors are dropped

    def _record(self, outcome: str) -> None:
        if self.metrics:
            self.metrics.outcome(outcome)
