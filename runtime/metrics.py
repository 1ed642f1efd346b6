"""The server's Prometheus series (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from runtime.frames import TurnLatency


class Metrics:
    """The Prometheus series of one app (own registry, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions = Gauge("likeness_sessions_active", "live sessions", registry=self.registry)
        self.started = Counter(
            "likeness_sessions_total", "sessions started", registry=self.registry
        )
        self.refused = Counter(
            "likeness_sessions_refused_total",
            "offers refused",
            ["reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "likeness_turn_stage_seconds",
            "time from the end of user speech to each stage of the reply",
            ["stage"],
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
            registry=self.registry,
        )

    def observe(self, latency: TurnLatency) -> None:
        for stage, ms in latency.stages_ms().items():
            self.latency.labels(stage=stage).observe(ms / 1000)
