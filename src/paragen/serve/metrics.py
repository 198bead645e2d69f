"""Server metrics with ``prometheus_client``, in a registry of the app's own (two apps in one
process, as in the tests, never share series).

Counters by endpoint and status, by how decodes ended, and by strategy (tokens, target and
draft calls, draft tokens proposed and accepted, steps with and without drafting); gauges of
running rows and waiting requests read live from the engine, with tokens per call and
acceptance rate per strategy; histograms of batch size per step, time to first text,
inter-token latency and request latency.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from paragen.driver import Stats

# Seconds: a tiny model answers in milliseconds, a long speculative decode in tens of seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Everything ``/metrics`` reports; ``queue_depth`` and ``in_flight`` are read live from the engine."""

    def __init__(self, queue_depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("paragen_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.outcomes = Counter("paragen_decodes", "Decodes ended, by how they ended.", ["outcome"], registry=r)
        Gauge("paragen_queue_depth", "Requests waiting to join the running batch.", registry=r).set_function(queue_depth)
        Gauge("paragen_in_flight", "Requests in the running batch (rows being decoded).", registry=r).set_function(in_flight)
        by = ["strategy"]
        self.tokens = Counter("paragen_generated_tokens", "New tokens generated, by strategy.", by, registry=r)
        self.target_calls = Counter("paragen_target_calls", "Target forward calls (prefill excluded) per row, by strategy.",
                                    by, registry=r)
        self.draft_calls = Counter("paragen_draft_calls", "Draft model forward calls (prefill excluded) per row, by strategy.",
                                   by, registry=r)
        self.proposed = Counter("paragen_draft_tokens_proposed", "Draft tokens proposed for verification, by strategy.",
                                by, registry=r)
        self.accepted = Counter("paragen_draft_tokens_accepted", "Draft tokens the target accepted, by strategy.",
                                by, registry=r)
        self.tokens_per_call = Gauge("paragen_tokens_per_call", "New tokens per target call since start, by strategy.",
                                     by, registry=r)
        self.acceptance = Gauge("paragen_acceptance_rate", "Accepted / proposed draft tokens since start, by strategy.",
                                by, registry=r)
        self.steps = Counter("paragen_steps", "Engine steps by strategy, and whether the speculation policy drafted "
                             "(always: sampled groups and strategies without a choice).", ["strategy", "drafted"], registry=r)
        self.batch = Histogram("paragen_batch_rows", "Rows in the batch of each engine step.", buckets=BATCH_BUCKETS,
                               registry=r)
        self.latency = Histogram("paragen_request_seconds", "Request latency, arrival to last byte, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_piece = Histogram("paragen_first_text_seconds", "Arrival to the first committed text.",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.between = Histogram("paragen_inter_token_seconds", "Time between a stream's committed pieces.",
                                 buckets=TOKEN_BUCKETS, registry=r)
        self._sums: dict[str, list[int]] = {}  # strategy -> [tokens, target calls, proposed, accepted]

    def request(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if seconds is not None:
            self.latency.labels(endpoint).observe(seconds)

    def outcome(self, kind: str) -> None:
        self.outcomes.labels(kind).inc()

    def first(self, seconds: float) -> None:
        self.first_piece.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        self.between.observe(seconds)

    def step(self, strategy: str, rows: int, drafted: bool | None) -> None:
        """One engine step of a group of ``rows`` (``drafted``: the policy's choice, None when it had none)."""
        self.batch.observe(rows)
        self.steps.labels(strategy, "always" if drafted is None else str(drafted).lower()).inc()

    def decoded(self, stats: Stats) -> None:
        """Add one finished decode's statistics."""
        name = stats.strategy
        proposed, accepted = sum(stats.extra.get("proposed", ())), sum(stats.extra.get("accepted", ()))
        self.tokens.labels(name).inc(stats.new_tokens)
        self.target_calls.labels(name).inc(stats.target_calls)
        self.draft_calls.labels(name).inc(stats.draft_calls)
        self.proposed.labels(name).inc(proposed)
        self.accepted.labels(name).inc(accepted)
        s = self._sums.setdefault(name, [0, 0, 0, 0])
        for i, v in enumerate((stats.new_tokens, stats.target_calls, proposed, accepted)):
            s[i] += v
        if s[1]:
            self.tokens_per_call.labels(name).set(s[0] / s[1])
        if s[2]:
            self.acceptance.labels(name).set(s[3] / s[2])

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        return generate_latest(self.registry).decode()
