"""``paragen serve --replicas N``: the same FastAPI app, one per Ray Serve replica.

Each replica is a Ray actor that loads the model once and builds the app of
``paragen.serve.app.create_app`` around it (its own engine, queue and metrics); Ray Serve's
HTTP proxy listens on --host/--port and spreads requests over the replicas, and streams
(server-sent events) pass through it unchanged. Every answer carries the header
``x-paragen-replica`` naming the replica that decoded it, so a client or a test can see the
spread (each replica's ``/metrics`` counts its own requests).

All replicas of the app are built from one frozen ``ReplicaSpec`` (one ``bind``), so they
are alike by construction; a second ``paragen serve --replicas`` against a cluster already
serving paragen is refused, naming the settings that differ, instead of replacing the
running replicas with others (or, during Ray's rolling update, mixing the two).

A replica that dies (its process killed, its node lost) is restarted by Ray, and new
requests go to the replicas alive meanwhile. A request that was running on it is not
retried by the server: Ray's proxy answers it with a 500 (its own message, not OpenAI's
shape) when its answer had not begun, and a stream already under way ends without its
final ``[DONE]`` (the client sees a connection error). Retrying on the server would be wrong for a stream (the client holds text
that a second decode would repeat, or with sampling contradict) and would hide the loss
from the client, who alone knows whether the request is still wanted; the OpenAI clients
retry a 5xx by themselves (``max_retries``). No client ever gets another request's text:
a request's text comes only from the decode of its own row on the replica that took it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from paragen.errors import InvalidInputError, ParagenError
from paragen.serve.app import ServeConfig

APP_NAME = "paragen"
REPLICA_HEADER = "x-paragen-replica"
HEALTH_CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class ReplicaSpec:
    """What every replica builds itself from."""

    model: str
    draft: str | None = None
    load: dict[str, Any] = field(default_factory=dict)  # paragen.load's keyword arguments
    config: ServeConfig = field(default_factory=ServeConfig)
    threads: int = 1  # torch threads per replica


@dataclass(frozen=True)
class Scaling:
    """A fixed number of replicas, or autoscaling between two bounds on the requests each
    replica holds (running and waiting); one or the other."""

    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_requests: float | None = None

    def __post_init__(self) -> None:
        auto = (self.min_replicas, self.max_replicas, self.target_requests) != (None, None, None)
        if self.replicas is not None and auto:
            raise InvalidInputError("give --replicas N (a fixed number) or --min-replicas/--max-replicas (autoscaling), "
                                    "not both")
        if self.replicas is None and (self.min_replicas is None or self.max_replicas is None):
            raise InvalidInputError("autoscaling needs both --min-replicas and --max-replicas")
        if self.replicas is not None and self.replicas < 1:
            raise InvalidInputError(f"--replicas must be at least 1, got {self.replicas}")
        if auto and not 0 <= self.min_replicas <= self.max_replicas or auto and self.max_replicas < 1:
            raise InvalidInputError("--min-replicas and --max-replicas: 0 <= min <= max, max at least 1")

    def options(self, config: ServeConfig) -> dict[str, Any]:
        """``serve.deployment`` options. A replica holds up to max_batch running rows and max_queue
        waiting ones; Ray's proxy keeps the rest, so a replica's 429 only means all are full."""
        ongoing = config.max_batch + config.max_queue
        if self.replicas is not None:
            return {"num_replicas": self.replicas, "max_ongoing_requests": ongoing}
        target = self.target_requests or config.max_batch  # scale up when the running batches are full
        return {"max_ongoing_requests": ongoing, "autoscaling_config": {
            "min_replicas": self.min_replicas, "max_replicas": self.max_replicas, "target_ongoing_requests": target}}


class _ReplicaHeader:
    """ASGI middleware: every answer names the replica that made it."""

    def __init__(self, app: Any, replica: str) -> None:
        self.app, self.replica = app, replica.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.replica)]}
            await send(message)

        await self.app(scope, receive, named if scope["type"] == "http" else send)


@serve.ingress()
class Replica:
    """One replica: the models, loaded once, and the app around them (built by Ray Serve
    after ``__init__`` through ``__serve_build_asgi_app__``; its lifespan starts the engine)."""

    def __init__(self, spec: ReplicaSpec) -> None:
        import torch

        import paragen

        torch.set_num_threads(spec.threads)  # the replica's own process
        self.spec = spec
        self.model = paragen.load(spec.model, **spec.load)
        self.draft = paragen.load(spec.draft, **spec.load) if spec.draft else None
        # the replica's id and its process: which replica answered, and which process to look at
        self.name = f"{serve.get_replica_context().replica_id.unique_id}@{socket.gethostname()}:{os.getpid()}"

    def __serve_build_asgi_app__(self) -> Any:
        from paragen.serve.app import create_app

        app = create_app(self.model, self.draft, self.spec.config)
        app.add_middleware(_ReplicaHeader, replica=self.name)
        return app

    def describe(self) -> ReplicaSpec:
        return self.spec


def deploy(spec: ReplicaSpec, scaling: Scaling, host: str, port: int) -> str:
    """Start Serve's HTTP proxy on host:port (on a running Ray connection) and the replicas;
    returns the base URL once every replica is up. Refuses a cluster already serving paragen."""
    refuse_running(spec)
    serve.start(http_options={"host": host, "port": port})
    gpus = 1 if str(spec.load.get("device", "cpu")).startswith("cuda") else 0
    # Serve notices a replica whose process died at its next health check (every 10 s by default, and a
    # replacement then starts: ~15 s measured); a check every 2 s costs a replica one cheap call and
    # brings a replacement up sooner.
    deployment = serve.deployment(Replica, name="Replica", ray_actor_options={"num_cpus": spec.threads, "num_gpus": gpus},
                                  health_check_period_s=HEALTH_CHECK_SECONDS, **scaling.options(spec.config))
    serve.run(deployment.bind(spec), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def refuse_running(spec: ReplicaSpec) -> None:
    """One paragen app per cluster, its replicas alike: a second one is refused with the settings that differ."""
    running = serve.status().applications.get(APP_NAME)
    if running is None or running.status in ("DELETING", "NOT_STARTED"):
        return
    other = serve.get_app_handle(APP_NAME).describe.remote().result(timeout_s=60)
    ours, theirs = _flat(spec), _flat(other)
    differ = [f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here"
              for k in sorted(ours | theirs) if ours.get(k) != theirs.get(k)]
    why = ("settings differ (" + "; ".join(differ) + ")") if differ else "with the same settings"
    raise ParagenError(f"this Ray cluster already serves paragen {why}: replicas of one app must be alike, so stop "
                       f"that one first (`serve shutdown`, or Ctrl-C on its `paragen serve`)")


def _flat(spec: ReplicaSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    return {**{k: v for k, v in d.items() if k not in ("config", "load")}, **d["load"], **d["config"]}


def run_replicas(spec: ReplicaSpec, scaling: Scaling, address: str, host: str, port: int) -> int:
    """``paragen serve --replicas``: deploy, wait for Ctrl-C, take the app down."""
    from paragen.cluster import ray_cluster

    with ray_cluster(address):
        refuse_running(spec)  # before the try: another command's app is not ours to take down
        try:
            url = deploy(spec, scaling, host, port)
            print(f"paragen: serving {spec.model} at {url}/v1 on Ray Serve ({_replicas_text(scaling)}); Ctrl-C stops it",
                  flush=True)
            _wait_for_stop()
        finally:
            # the app is this command's: it goes when the command ends (a local Ray instance goes too)
            if serve.status().applications.get(APP_NAME) is not None:
                serve.delete(APP_NAME)
            if address == "local":
                serve.shutdown()
    return 0


def _wait_for_stop() -> None:
    """Return on SIGTERM (what a service manager sends to stop a server); Ctrl-C raises
    KeyboardInterrupt as ever. Either way the caller's cleanup runs: Python's default for
    SIGTERM would end the process on the spot and leave the app running on a cluster."""
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    try:
        while not stopped.wait(1.0):  # a timed wait, so that Ctrl-C gets through
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _replicas_text(scaling: Scaling) -> str:
    if scaling.replicas is not None:
        return f"{scaling.replicas} replica{'s' if scaling.replicas > 1 else ''}"
    return f"{scaling.min_replicas} to {scaling.max_replicas} replicas, autoscaled"
