"""Item metrics: the counters and histogram kept as items finish (scraped by the HTTP face).

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

A scrape (`daemon/faces/http/scrape.py`) reads them with the gauges.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

import orjson
import structlog
from prometheus_client import (
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = structlog.get_logger()

SUCCEEDED, FAILED_TRANSIENT, FAILED_FINAL, SKIPPED, UNROUTED = (
    "succeeded", "failed_transient", "failed_final", "skipped", "unrouted")
UNKNOWN_TYPE = "unknown"  # bad input of a type no handler has: one series, however many
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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


