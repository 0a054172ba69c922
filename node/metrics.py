"""Prometheus metrics of one node, served at the console's /metrics.

Counters follow the audit trail (each event counts as it is written); the jobs gauge is read from
the database at each scrape; the evaluator tells the inference latency per series and the images it
scores while their series wait.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from core.events import AuditEventName
from node.db import Database, Delivery, DeliveryState, Series

# audit event -> (counter, label value)
_COUNTED: dict[str, tuple[str, str]] = {
    AuditEventName.INSTANCE_STORED: ("instances", "stored"),
    AuditEventName.INSTANCE_REFUSED: ("instances", "refused"),
    AuditEventName.ASSOCIATION_ACCEPTED: ("associations", "accepted"),
    AuditEventName.ASSOCIATION_REJECTED: ("associations", "rejected"),
    AuditEventName.TLS_REFUSED: ("associations", "tls_refused"),
    AuditEventName.REPORT_CREATED: ("reports", "created"),
    AuditEventName.DELIVERY_SENT: ("sends", "sent"),
    AuditEventName.DELIVERY_RETRY: ("sends", "retry"),
    AuditEventName.DELIVERY_FAILED: ("sends", "failed"),
}
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class _Jobs(Collector):
    """Series and deliveries by state, counted in the database when scraped."""

    def __init__(self, db: Database):
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        series = GaugeMetricFamily("dfnode_series_jobs", "Series by evaluation state", labels=["state"])
        deliveries = GaugeMetricFamily("dfnode_delivery_jobs", "Report deliveries by state", labels=["state"])
        with self.db.session() as s:
            waiting = s.scalar(select(func.count()).select_from(Series).where(
                Series.route.is_not(None), Series.received_version > Series.evaluated_version)) or 0
            failed = s.scalar(select(func.count()).select_from(Series).where(Series.error.is_not(None))) or 0
            by_state = dict(s.execute(select(Delivery.state, func.count()).group_by(Delivery.state)).all())
        series.add_metric(["waiting"], waiting)
        series.add_metric(["failed"], failed)
        for state in DeliveryState:
            deliveries.add_metric([state.value], by_state.get(state, 0))
        yield series
        yield deliveries


class Metrics:
    """A registry of its own (several nodes may share a process, as in the tests)."""

    def __init__(self, db: Database):
        self.registry = CollectorRegistry()
        self.counters = {
            "instances": Counter("dfnode_instances_total", "Instances received, by outcome", ["outcome"],
                                 registry=self.registry),
            "associations": Counter("dfnode_associations_total", "Associations, by outcome", ["outcome"],
                                    registry=self.registry),
            "reports": Counter("dfnode_reports_total", "Reports created", ["outcome"], registry=self.registry),
            "sends": Counter("dfnode_report_sends_total", "Report send attempts, by outcome", ["outcome"],
                             registry=self.registry),
        }
        self.inference = Histogram("dfnode_inference_seconds", "Time to score and report one series",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.scored_early = Counter("dfnode_images_scored_early_total",
                                    "Images of series waiting to be stable, scored before their stable time",
                                    ["model"], registry=self.registry)
        self.registry.register(_Jobs(db))

    def count_event(self, event: str) -> None:
        """Count an audit event (Audit calls this for every event it writes)."""
        counted = _COUNTED.get(event)
        if counted is not None:
            self.counters[counted[0]].labels(counted[1]).inc()

    def observe_inference(self, model: str, seconds: float) -> None:
        self.inference.labels(model).observe(seconds)

    def count_scored_early(self, model: str, images: int) -> None:
        self.scored_early.labels(model).inc(images)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
