"""One Prometheus scrape (`GET /metrics`): the item counters, and gauges read when scraped.

Gauges are gathered at scrape time: parked, paused and failed from the state
log's view (the same on every replica), client queue depths from the depth
cache's last background walk (`daemon/broker/depths.py`: a scrape never walks them;
absent until the first walk ends), and the few shared queues by passive
declares. When the broker cannot be asked, the broker gauges are left out and
the rest is served. Nothing goes to prometheus_client's global registry: each
scrape builds a registry of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping, Sized
from dataclasses import dataclass

import structlog
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.broker.depths import DepthCache, queue_depths
from daemon.broker.errors import CHANNEL_ERRORS
from daemon.broker.topology import Topology
from daemon.core.metrics import ItemMetrics, Samples, merged_item_metrics
from daemon.core.outbox import Outbox
from daemon.core.state import StateLog

log = structlog.get_logger()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT = 10.0
_DEPTHS_ERRORS: tuple[type[BaseException], ...] = (*CHANNEL_ERRORS, TimeoutError)


@dataclass(frozen=True)
class Sources:
    """What a scrape reads, and nothing else of the daemon."""

    topo: Topology
    retry_delays: tuple[float, ...]
    connection: AbstractRobustConnection
    state: StateLog
    consumers: Sized  # the registered clients
    depth_cache: DepthCache
    outbox: Outbox
    items: ItemMetrics
    worker_samples: Callable[[], Samples]  # the worker processes' counters (S2SQ_PROCESSES)
    connected: Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Gauges:
    """Everything of one scrape that is read, not counted. None: the broker was not asked."""

    clients: int
    parked: int
    paused: int
    failed: int
    depths: Mapping[str, int | None] | None = None  # client id -> ready messages
    depths_age: float | None = None  # seconds since the walk that found `depths` ended
    unrouted: int | None = None
    nonblocking: int | None = None
    retry_waiting: int | None = None
    backlog: int | None = None


class _Snapshot(Collector):
    """The gauges and notification counters of one scrape (collectors cannot await)."""

    def __init__(self, gauges: Gauges, jobs: Mapping[str, int],
                 deliveries: Mapping[tuple[str, str], int], failures: Mapping[str, int]) -> None:
        self._gauges = gauges
        self._jobs = jobs
        self._deliveries = deliveries
        self._failures = failures

    def collect(self) -> Iterator[Metric]:
        yield from self._state()
        yield from self._queues()
        yield from self._notifications()

    def _state(self) -> Iterator[Metric]:
        g = self._gauges
        yield GaugeMetricFamily("s2s_clients", "Registered clients.", value=g.clients)
        yield GaugeMetricFamily("s2s_parked_clients", "Clients parked on a failed item "
                                "(state log: the same on every replica).", value=g.parked)
        yield GaugeMetricFamily("s2s_paused_clients", "Clients paused.", value=g.paused)
        yield GaugeMetricFamily("s2s_failed_items", "Non-blocking items set aside as failed, "
                                "waiting for a retry or a skip.", value=g.failed)

    def _queues(self) -> Iterator[Metric]:
        g = self._gauges
        for name, text, value in (
            ("s2s_unrouted_items", "Blocking items for unregistered clients.", g.unrouted),
            ("s2s_nonblocking_queue_depth", "Items ready in the non-blocking queue.",
             g.nonblocking),
            ("s2s_nonblocking_retry_waiting", "Non-blocking items waiting in the delay "
             "queues for their next attempt.", g.retry_waiting),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)
        if g.depths is not None:
            depth = GaugeMetricFamily(
                "s2s_client_queue_depth", "Items ready in each client's blocking queue (not "
                "the one running, parked or held), as the last background walk found them.",
                labels=["client_id"])
            for client_id, value in sorted(g.depths.items()):
                if value is not None:
                    depth.add_metric([client_id], value)
            yield depth
        if g.depths_age is not None:
            yield GaugeMetricFamily(
                "s2s_client_queue_depth_age_seconds", "Seconds since the walk that read "
                "s2s_client_queue_depth ended (absent, like the depths, until the first one).",
                value=g.depths_age)

    def _notifications(self) -> Iterator[Metric]:
        yield _counters("s2s_notification_jobs", "Notifications queued by this daemon, by"
                        " kind (parked, failed, resumed).", ["job"], self._jobs)
        yield _counters("s2s_notification_deliveries", "Mails and webhooks by outcome "
                        "(sent, retried, given_up).", ["channel", "outcome"], self._deliveries)
        yield _counters("s2s_notification_failures", "Notifications given up because a step"
                        " crashed on them (a job that cannot be built), by step (decide,"
                        " send).", ["step"], self._failures)
        if self._gauges.backlog is not None:
            yield GaugeMetricFamily(
                "s2s_notification_backlog", "Notifications waiting in the broker: to decide, "
                "to send, or waiting for a delivery retry.", value=self._gauges.backlog)


async def _gauges(src: Sources) -> Gauges:
    view = src.state.view
    counted = Gauges(len(src.consumers), len(view.parked), len(view.paused), len(view.failed))
    if not src.connected():
        return counted
    topo, outbox = src.topo, src.outbox
    delays = [topo.delay_queue(d) for d in sorted(set(src.retry_delays))]
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            waiting = outbox.queue_names
            shared = await queue_depths(src.connection,
                                        [topo.unrouted, topo.nonblocking, *delays, *waiting])
            backlog = sum(shared.get(n) or 0 for n in waiting)
    except _DEPTHS_ERRORS as exc:
        log.warning("metrics.broker_unavailable", error=repr(exc))
        return counted
    cache = src.depth_cache
    return Gauges(
        counted.clients, counted.parked, counted.paused, counted.failed,
        depths=None if cache.walked_at is None else cache.depths,
        depths_age=None if cache.walked_at is None else time.monotonic() - cache.walked_at,
        unrouted=shared.get(topo.unrouted), nonblocking=shared.get(topo.nonblocking),
        retry_waiting=sum(shared.get(name) or 0 for name in delays), backlog=backlog,
    )


async def render(src: Sources) -> bytes:
    """The Prometheus text of one scrape."""
    gauges = await _gauges(src)
    registry = CollectorRegistry(auto_describe=False)
    for collector in merged_item_metrics(src.items, src.worker_samples()):
        registry.register(collector)
    outbox = src.outbox
    registry.register(_Snapshot(gauges, dict(outbox.jobs), dict(outbox.deliveries),
                                dict(outbox.failures)))
    return generate_latest(registry)


def _counters(name: str, doc: str, labels: list[str],
              values: Mapping[str, int] | Mapping[tuple[str, str], int]) -> Metric:
    """One counter family, a sample per key (a label value, or a tuple of them), sorted."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric([key] if isinstance(key, str) else list(key), value)
    return family
