"""ItemMetrics and call_handler's timing, without a broker: what a scrape would show."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from daemon.core.metrics import (
    FAILED_FINAL,
    SKIPPED,
    SUCCEEDED,
    ItemMetrics,
    decode_samples,
    encode_samples,
    item_samples,
    merged_item_metrics,
)
from daemon.core.runtime import call_handler
from handlers.base import Context, Item
from handlers.errors import PermanentError, TransientError
from tests.daemon.test_runtime import NoContext, parsed


def registry(metrics: ItemMetrics) -> CollectorRegistry:
    out = CollectorRegistry(auto_describe=False)
    out.register(metrics.items)
    out.register(metrics.durations)
    return out


def items(metrics: ItemMetrics, type_: str, queue: str, outcome: str) -> float | None:
    return registry(metrics).get_sample_value(
        "s2s_items_total", {"type": type_, "queue": queue, "outcome": outcome})


def calls(metrics: ItemMetrics, type_: str, queue: str = "blocking") -> float | None:
    return registry(metrics).get_sample_value(
        "s2s_handler_duration_seconds_count", {"type": type_, "queue": queue})


def test_outcomes_are_counted_by_type_queue_and_outcome():
    """Each count lands in its own series; repeated counts add up."""
    metrics = ItemMetrics({"product.sync", "order.add_to_source"})
    for _ in range(3):
        metrics.count("product.sync", "blocking", SUCCEEDED)
    metrics.count("product.sync", "blocking", FAILED_FINAL)
    metrics.count("order.add_to_source", "nonblocking", SKIPPED)
    assert items(metrics, "product.sync", "blocking", SUCCEEDED) == 3
    assert items(metrics, "product.sync", "blocking", FAILED_FINAL) == 1
    assert items(metrics, "order.add_to_source", "nonblocking", SKIPPED) == 1
    assert items(metrics, "product.sync", "nonblocking", SUCCEEDED) is None


def test_types_no_handler_knows_share_one_series():
    """Bad input of made-up types cannot grow the number of series."""
    metrics = ItemMetrics({"product.sync"})
    metrics.count("no.such.type", "blocking", FAILED_FINAL)
    metrics.count("another.one", "blocking", FAILED_FINAL)
    metrics.count(None, "blocking", FAILED_FINAL)
    assert items(metrics, "unknown", "blocking", FAILED_FINAL) == 3
    text = generate_latest(registry(metrics)).decode()
    assert "no.such.type" not in text
    assert "_created" not in text


def test_the_histogram_puts_each_duration_in_its_bucket():
    """Buckets are cumulative in the exposition; sum and count follow the observations."""
    metrics = ItemMetrics()
    for seconds in (0.001, 0.02, 0.02, 7.0):
        metrics.observe("system.noop", "blocking", seconds)
    reg = registry(metrics)
    labels = {"type": "system.noop", "queue": "blocking"}

    def bucket(le: str) -> float | None:
        return reg.get_sample_value("s2s_handler_duration_seconds_bucket", {**labels, "le": le})

    assert (bucket("0.005"), bucket("0.025"), bucket("5.0"), bucket("10.0"), bucket("+Inf")) \
        == (1, 3, 3, 4, 4)
    assert reg.get_sample_value("s2s_handler_duration_seconds_sum", labels) == pytest.approx(7.041)


def test_a_scrape_adds_the_worker_processes_samples_to_the_supervisors():
    """S2SQ_PROCESSES: counters, buckets, _count and _sum add up; series of one side show."""
    mine, theirs = ItemMetrics(), ItemMetrics()
    mine.count("system.noop", "nonblocking", SUCCEEDED)
    for _ in range(2):
        theirs.count("system.noop", "nonblocking", SUCCEEDED)
    theirs.count("order.add_to_source", "nonblocking", FAILED_FINAL)
    mine.observe("system.noop", "nonblocking", 0.001)
    theirs.observe("system.noop", "nonblocking", 7.0)
    reg = CollectorRegistry(auto_describe=False)
    for collector in merged_item_metrics(mine, decode_samples(encode_samples(
            item_samples(theirs)))):
        reg.register(collector)
    labels = {"type": "system.noop", "queue": "nonblocking"}

    def value(name: str, **more: str) -> float | None:
        return reg.get_sample_value(name, {**labels, **more})

    assert value("s2s_items_total", outcome=SUCCEEDED) == 3
    assert reg.get_sample_value("s2s_items_total", {
        "type": "order.add_to_source", "queue": "nonblocking", "outcome": FAILED_FINAL}) == 1
    assert (value("s2s_handler_duration_seconds_bucket", le="0.005"),
            value("s2s_handler_duration_seconds_bucket", le="10.0"),
            value("s2s_handler_duration_seconds_count")) == (1, 2, 2)
    assert value("s2s_handler_duration_seconds_sum") == pytest.approx(7.001)
    text = generate_latest(reg).decode()
    series = [line for line in text.splitlines() if "system.noop" in line and "duration" in line]
    assert [line.split("{")[0] for line in series[-3:]] == [
        "s2s_handler_duration_seconds_bucket", "s2s_handler_duration_seconds_count",
        "s2s_handler_duration_seconds_sum"], "buckets, then count, then sum"


@pytest.mark.parametrize("line", [b"", b"{", b"[1]", b'[["a", [["k"]], 1]]', b"[[1,2,3,4]]"])
def test_a_samples_line_that_is_not_one_is_refused(line):
    """A report cut off as its worker died is refused, not half read."""
    with pytest.raises(ValueError, match="not a samples line"):
        decode_samples(line)


async def fine(item: Item[Any], ctx: Any) -> None:
    return None


async def slow(item: Item[Any], ctx: Any) -> None:
    await asyncio.sleep(3600)


async def crashes(item: Item[Any], ctx: Any) -> None:
    raise ValueError("boom")


async def transient(item: Item[Any], ctx: Any) -> None:
    raise TransientError("shop answered 503")


@pytest.mark.parametrize(("func", "error"), [
    (fine, None), (slow, TransientError), (crashes, PermanentError), (transient, TransientError),
], ids=["succeeds", "times-out", "crashes", "fails"])
async def test_every_handler_call_is_timed_whatever_its_outcome(func, error):
    """One observation per call, so the histogram's count is the number of attempts."""
    metrics = ItemMetrics()
    if error is None:
        await call_handler(parsed(func), 1, cast(Context, NoContext()), 0.05, metrics)
    else:
        with pytest.raises(error):
            await call_handler(parsed(func), 1, cast(Context, NoContext()), 0.05, metrics)
    assert calls(metrics, "test.thing") == 1
    seconds = registry(metrics).get_sample_value(
        "s2s_handler_duration_seconds_sum", {"type": "test.thing", "queue": "blocking"})
    assert seconds is not None
    assert (0.05 <= seconds < 1) if func is slow else (0 <= seconds < 0.05)
