"""The per-item hot path stays cheap: no aio-pika message objects, no structlog chain.

Not a timing: these count calls. A profile hook (`sys.setprofile`, this thread
only: the daemon runs in the test's event loop) counts every construction of
aio-pika's `IncomingMessage` and every pass through structlog's processor
chain (`BoundLoggerBase._process_event`, which every `log.info` and the like
goes through) while a few hundred items succeed. Both were measured at about
a tenth of the daemon's CPU per item each (bench/RESULTS.md); one per item
means the hot path went back to them.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import orjson
import pytest
from aio_pika.message import IncomingMessage
from structlog._base import BoundLoggerBase

from daemon import logs
from daemon.broker.producer import Producer
from daemon.core.metrics import ItemMetrics
from tests.support import Broker, FakeShop, clients_toml, running, settings_for, wait_until

pytestmark = pytest.mark.timeout(90)
ITEMS = 200
CLIENTS = ["acme", "globex"]
WATCHED = {
    IncomingMessage.__init__.__code__: "aio-pika IncomingMessage",
    BoundLoggerBase._process_event.__code__: "structlog processor chain",
}


@contextmanager
def counting_calls() -> Iterator[Counter[str]]:
    """Count calls of the `WATCHED` functions in this thread while the block runs."""
    counts: Counter[str] = Counter()
    previous = sys.getprofile()

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event == "call" and (name := WATCHED.get(frame.f_code)) is not None:
            counts[name] += 1

    sys.setprofile(profile)
    try:
        yield counts
    finally:
        sys.setprofile(previous)


@pytest.mark.parametrize("queue", ["nonblocking", "blocking"])
async def test_items_that_succeed_build_no_aio_pika_message_and_skip_the_structlog_chain(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, monkeypatch, queue
):
    """Each item's delivery comes from aiormq and its success line bypasses structlog."""
    out = io.BytesIO()
    monkeypatch.setattr(logs, "hot_info", logs.json_writer(out))  # as `configure("json")`
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, CLIENTS))
    settings = settings_for(prefix, tmp_path, clients_file=path, succeeded_events=False,
                            processes=1)  # the pool in this process, where it is counted
    producer = Producer(amqp.connection, amqp.topo)

    def succeeded() -> list[dict[str, Any]]:
        lines = (orjson.loads(line) for line in out.getvalue().splitlines())
        return [line for line in lines if line["event"] == "item.succeeded"]

    async with running(settings) as sup:
        with counting_calls() as counts:
            for n in range(ITEMS):
                await producer.publish(CLIENTS[n % 2], "system.noop", {},
                                       message_id=f"H{n:03d}", queue=queue)
            await wait_until(lambda: succeeded_count(sup.rt.metrics, queue) >= ITEMS, 60,
                             f"{ITEMS} items to succeed")
    # A few are fine (start-up and background lines); one per item is not.
    assert counts["aio-pika IncomingMessage"] < ITEMS // 10, counts
    assert counts["structlog processor chain"] < ITEMS // 10, counts
    lines = succeeded()
    assert {line["queue"] for line in lines} == {queue}
    assert sorted(line["message_id"] for line in lines) == [f"H{n:03d}" for n in range(ITEMS)]
    assert {(line["client_id"], line["type"]) for line in lines} == {
        (c, "system.noop") for c in CLIENTS}


def succeeded_count(metrics: ItemMetrics, queue: str) -> float:
    """Items of `queue` counted as succeeded (the `s2s_items` counter)."""
    return sum(sample.value for family in metrics.items.collect() for sample in family.samples
               if sample.name == "s2s_items_total" and sample.labels["queue"] == queue
               and sample.labels["outcome"] == "succeeded")
