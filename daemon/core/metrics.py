"""Prometheus metrics (`GET /metrics`): item counters kept as items finish, gauges when scraped.

`ItemMetrics` holds the counters and the handler-duration histogram of one
daemon. Nothing goes to prometheus_client's global registry (several
supervisors share a test process); each scrape builds a registry of its own.
The hot path pays a dict lookup for a label child cached per (type, queue)
and its locked add: about 1 µs an item with the histogram (`bench/metrics_cost.py`),
against the ~550 µs the daemon spends on an item.

With `S2SQ_PROCESSES` over 1, each worker process counts its own items and
sends its samples to the supervisor about every second (`daemon/workers.py`);
a scrape adds them to the supervisor's (`Merged`), so the counters and the
histogram cover every process of the daemon.

Gauges are gathered at scrape time: parked, paused and failed from the state
log's view (the same on every replica), client queue depths from the depth
cache's last background walk (`daemon/broker/depths.py`: a scrape never walks them;
absent until the first walk ends), and the few shared queues by passive
declares. When the broker cannot be asked, the broker gauges are left out and
the rest is served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.broker.depths import queue_depths
from daemon.broker.errors import CHANNEL_ERRORS

if TYPE_CHECKING:
    from daemon.supervisor import Supervisor

log = structlog.get_logger()

_DEPTHS_ERRORS: tuple[type[BaseException], ...] = (*CHANNEL_ERRORS, TimeoutError)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SUCCEEDED, FAILED_TRANSIENT, FAILED_FINAL, SKIPPED, UNROUTED = (
    "succeeded", "failed_transient", "failed_final", "skipped", "unrouted")
UNKNOWN_TYPE = "unknown"  # bad input of a type no handler has: one series, however many
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SCRAPE_TIMEOUT = 10.0


class ItemMetrics:
    """Outcomes and handler durations of one daemon's items, by type and queue."""

    def __init__(self, known_types: Collection[str] | None = None) -> None:
        # `_created` series would double every series; the switch is process-wide,
        # and the daemon is the only exporter in its process.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._known = None if known_types is None else frozenset(known_types)
        self.items = Counter(
            "s2s_items", "Item outcomes: succeeded, failed_transient (an attempt that is "
            "retried), failed_final (parked, or moved to failed), skipped.",
            ["type", "queue", "outcome"], registry=None)
        self.durations = Histogram(
            "s2s_handler_duration_seconds", "Duration of each handler call (every attempt, "
            "whatever its outcome); _count is the number of attempts.",
            ["type", "queue"], buckets=BUCKETS, registry=None)
        self._counters: dict[tuple[str, str, str], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    def _type(self, type_: str | None) -> str:
        if type_ is None or (self._known is not None and type_ not in self._known):
            return UNKNOWN_TYPE
        return type_

    def count(self, type_: str | None, queue: str, outcome: str) -> None:
        """One item reached `outcome` (see the constants above)."""
        key = (self._type(type_), queue, outcome)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.items.labels(*key)
        child.inc()

    def observe(self, type_: str | None, queue: str, seconds: float) -> None:
        """One handler call took `seconds`."""
        key = (self._type(type_), queue)
        child = self._timers.get(key)
        if child is None:
            child = self._timers[key] = self.durations.labels(*key)
        child.observe(seconds)


# One process's item samples: (sample name, sorted labels) -> value. Counters, bucket
# counts, _count and _sum all add up across processes.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[SampleKey, float]


def item_samples(metrics: ItemMetrics) -> Samples:
    """The samples of `metrics`' counter and histogram, as they are now."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in (*metrics.items.collect(), *metrics.durations.collect())
            for s in family.samples}


def add_samples(*parts: Mapping[SampleKey, float]) -> Samples:
    """Sample by sample sums (pure)."""
    out: Samples = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0.0) + value
    return out


def encode_samples(samples: Samples) -> bytes:
    """One line of JSON, for the pipe from a worker process."""
    return orjson.dumps([[name, list(labels), value] for (name, labels), value
                         in samples.items()]) + b"\n"


def decode_samples(line: bytes) -> Samples:
    """What `encode_samples` wrote; ValueError if it is not that."""
    try:
        rows: Any = orjson.loads(line)
        return {(str(name), tuple((str(k), str(v)) for k, v in labels)): float(value)
                for name, labels, value in rows}
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"not a samples line: {exc}") from None


class Merged(Collector):
    """A metric of this process with the same samples of other processes added."""

    def __init__(self, metric: Counter | Histogram, others: Mapping[SampleKey, float]) -> None:
        self._metric = metric
        self._others = others

    def collect(self) -> Iterator[Metric]:
        for family in self._metric.collect():
            mine = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
            theirs = {key: value for key, value in self._others.items()
                      if _family_of(key[0], family.name)}
            merged = Metric(family.name, family.documentation, family.type)
            for (name, labels), value in sorted(add_samples(mine, theirs).items(),
                                                key=_exposition_order):
                merged.add_sample(name, dict(labels), value)
            yield merged


def _family_of(sample: str, family: str) -> bool:
    return sample in (f"{family}_total", f"{family}_bucket", f"{family}_count", f"{family}_sum")


def _exposition_order(item: tuple[SampleKey, float]) -> tuple[Any, ...]:
    """Series by series; in a histogram's, buckets by bound, then _count, then _sum."""
    (name, labels), _ = item
    series = tuple(kv for kv in labels if kv[0] != "le")
    bound = next((float(v) for k, v in labels if k == "le"), 0.0)
    return (series, name.endswith("_sum"), name.endswith("_count"), bound)


def merged_item_metrics(metrics: ItemMetrics, others: Mapping[SampleKey, float]
                        ) -> Iterable[Collector]:
    """The item counter and histogram of this process and of `others`, for one scrape."""
    return (Merged(metrics.items, others), Merged(metrics.durations, others))


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


async def _gauges(supervisor: Supervisor) -> Gauges:
    view = supervisor.state.view
    counted = Gauges(len(supervisor.consumers), len(view.parked), len(view.paused),
                     len(view.failed))
    if not supervisor.connected:
        return counted
    topo, outbox = supervisor.topo, supervisor.outbox
    delays = [topo.delay_queue(d) for d in sorted(set(supervisor.settings.retry_delays))]
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            waiting = [] if outbox is None else outbox.queue_names
            shared = await queue_depths(supervisor.connection,
                                        [topo.unrouted, topo.nonblocking, *delays, *waiting])
            backlog = None if outbox is None else sum(shared.get(n) or 0 for n in waiting)
    except _DEPTHS_ERRORS as exc:
        log.warning("metrics.broker_unavailable", error=repr(exc))
        return counted
    cache = supervisor.depth_cache
    return Gauges(
        counted.clients, counted.parked, counted.paused, counted.failed,
        depths=None if cache.walked_at is None else cache.depths,
        depths_age=None if cache.walked_at is None else time.monotonic() - cache.walked_at,
        unrouted=shared.get(topo.unrouted), nonblocking=shared.get(topo.nonblocking),
        retry_waiting=sum(shared.get(name) or 0 for name in delays), backlog=backlog,
    )


async def render(supervisor: Supervisor) -> bytes:
    """The Prometheus text of one scrape."""
    outbox = supervisor.outbox
    if outbox is None:
        return b""
    gauges = await _gauges(supervisor)
    registry = CollectorRegistry(auto_describe=False)
    for collector in merged_item_metrics(supervisor.rt.metrics, supervisor.worker_samples()):
        registry.register(collector)
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
