"""Server metrics in the Prometheus text exposition format, written by hand.

A few counters, gauges and fixed-bucket histograms behind one lock: the worker thread
records a finished decode while the event loop renders ``/metrics``. Written here rather
than with ``prometheus_client`` so that serving needs no further dependency and a test can
read every series back from the text.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

from paragen.driver import Stats

# Seconds: a tiny model answers in milliseconds, a long speculative decode in tens of seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Histogram:
    """Cumulative-bucket histogram of one series; not thread-safe (the Metrics lock guards it)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, **labels: str) -> list[str]:
        out = [f"{name}_bucket{_labels(**labels, le=repr(edge))} {c}" for edge, c in zip(self.buckets, self.counts)]
        out.append(f"{name}_bucket{_labels(**labels, le='+Inf')} {self.n}")
        out.append(f"{name}_sum{_labels(**labels)} {self.total:.6f}")
        out.append(f"{name}_count{_labels(**labels)} {self.n}")
        return out


class Metrics:
    """Everything ``/metrics`` reports. ``queue_depth`` and ``in_flight`` are read live from the scheduler."""

    def __init__(self, queue_depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self._queue_depth, self._in_flight = queue_depth, in_flight
        self.requests: dict[tuple[str, int], int] = defaultdict(int)  # (endpoint, HTTP status) -> count
        self.outcomes: dict[str, int] = defaultdict(int)  # finished | cancelled | timeout | error
        # per strategy: new tokens, target calls, draft calls, draft tokens proposed / accepted, decodes
        self.per_strategy: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.latency: dict[str, Histogram] = defaultdict(Histogram)  # endpoint -> request seconds
        self.first_piece = Histogram()  # request arrival -> first committed text
        self.queue_wait = Histogram()  # request arrival -> decode start

    def request(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            if seconds is not None:
                self.latency[endpoint].observe(seconds)

    def outcome(self, kind: str) -> None:
        with self._lock:
            self.outcomes[kind] += 1

    def waited(self, seconds: float) -> None:
        with self._lock:
            self.queue_wait.observe(seconds)

    def first(self, seconds: float) -> None:
        with self._lock:
            self.first_piece.observe(seconds)

    def decoded(self, stats: Stats) -> None:
        """Add one decode's statistics (also a cancelled or timed-out one: its calls were spent)."""
        with self._lock:
            s = self.per_strategy[stats.strategy]
            s["decodes"] += 1
            s["tokens"] += stats.new_tokens
            s["target_calls"] += stats.target_calls
            s["draft_calls"] += stats.draft_calls
            # draft-and-verify strategies count proposals and acceptances per draft depth
            s["proposed"] += sum(stats.extra.get("proposed", ()))
            s["accepted"] += sum(stats.extra.get("accepted", ()))

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        with self._lock:
            out = [
                "# HELP paragen_requests_total HTTP requests answered, by endpoint and status code.",
                "# TYPE paragen_requests_total counter",
            ]
            out += [f"paragen_requests_total{_labels(endpoint=e, status=str(c))} {n}"
                    for (e, c), n in sorted(self.requests.items())]
            out += ["# HELP paragen_decodes_total Decodes ended, by how they ended.", "# TYPE paragen_decodes_total counter"]
            out += [f"paragen_decodes_total{_labels(outcome=k)} {n}" for k, n in sorted(self.outcomes.items())]
            out += [
                "# HELP paragen_queue_depth Requests waiting for the decoder.", "# TYPE paragen_queue_depth gauge",
                f"paragen_queue_depth {self._queue_depth()}",
                "# HELP paragen_in_flight Requests being decoded now.", "# TYPE paragen_in_flight gauge",
                f"paragen_in_flight {self._in_flight()}",
            ]
            series = {
                "generated_tokens_total": ("counter", "New tokens generated.", lambda s: s["tokens"]),
                "target_calls_total": ("counter", "Target model forward calls (prefill excluded).", lambda s: s["target_calls"]),
                "draft_calls_total": ("counter", "Draft model forward calls (prefill excluded).", lambda s: s["draft_calls"]),
                "draft_tokens_proposed_total": ("counter", "Draft tokens proposed for verification.", lambda s: s["proposed"]),
                "draft_tokens_accepted_total": ("counter", "Draft tokens the target accepted.", lambda s: s["accepted"]),
                "tokens_per_call": ("gauge", "New tokens per target call since start.",
                                    lambda s: s["tokens"] / s["target_calls"] if s["target_calls"] else 0.0),
                "acceptance_rate": ("gauge", "Accepted / proposed draft tokens since start (draft-and-verify only).",
                                    lambda s: s["accepted"] / s["proposed"] if s["proposed"] else None),
            }
            for name, (kind, help_, value) in series.items():
                out += [f"# HELP paragen_{name} {help_} By strategy.", f"# TYPE paragen_{name} {kind}"]
                for strategy, s in sorted(self.per_strategy.items()):
                    v = value(s)
                    if v is not None:
                        out.append(f"paragen_{name}{_labels(strategy=strategy)} {v if isinstance(v, int) else round(v, 6)}")
            out += ["# HELP paragen_request_seconds Request latency, arrival to last byte, by endpoint.",
                    "# TYPE paragen_request_seconds histogram"]
            for endpoint, h in sorted(self.latency.items()):
                out += h.lines("paragen_request_seconds", endpoint=endpoint)
            out += ["# HELP paragen_first_text_seconds Arrival to the first committed text.",
                    "# TYPE paragen_first_text_seconds histogram", *self.first_piece.lines("paragen_first_text_seconds"),
                    "# HELP paragen_queue_wait_seconds Arrival to decode start.",
                    "# TYPE paragen_queue_wait_seconds histogram", *self.queue_wait.lines("paragen_queue_wait_seconds")]
        return "\n".join(out) + "\n"
