"""Prometheus metrics (`GET /metrics`), gathered when scraped.

This release exposes what an operator needs to see notifications lag:
deliveries by channel and outcome, and the backlog waiting in the broker.
Item, queue and parking metrics come with the console issue.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from daemon.supervisor import Supervisor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    """Metrics of one scrape, from values gathered beforehand (collectors cannot await)."""

    def __init__(self, jobs: Mapping[str, int], deliveries: Mapping[tuple[str, str], int],
                 backlog: int) -> None:
        self._jobs = jobs
        self._deliveries = deliveries
        self._backlog = backlog

    def collect(self) -> Iterator[Metric]:
        jobs = CounterMetricFamily(
            "s2s_notification_jobs", "Notifications queued by this daemon, by kind "
            "(parked, failed, resumed).", labels=["job"])
        for job, value in sorted(self._jobs.items()):
            jobs.add_metric([job], value)
        yield jobs
        deliveries = CounterMetricFamily(
            "s2s_notification_deliveries", "Mails and webhooks by outcome "
            "(sent, retried, given_up).", labels=["channel", "outcome"])
        for (channel, outcome), value in sorted(self._deliveries.items()):
            deliveries.add_metric([channel, outcome], value)
        yield deliveries
        yield GaugeMetricFamily(
            "s2s_notification_backlog", "Notifications waiting in the broker: to decide, "
            "to send, or waiting for a delivery retry.", value=self._backlog)


async def render(supervisor: Supervisor) -> bytes:
    """The Prometheus text of one scrape."""
    outbox = supervisor.outbox
    if outbox is None:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(dict(outbox.jobs), dict(outbox.deliveries),
                                await outbox.backlog()))
    return generate_latest(registry)
