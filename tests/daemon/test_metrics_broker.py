"""GET /metrics on a running daemon: what happened to items, and what waits where."""

from __future__ import annotations

import aio_pika
import pytest

from daemon.broker.depths import queue_depths
from tests.proxy import broker_proxy
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    free_port,
    running,
    scrape_metrics,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)
N = 5


def family(samples: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v for k, v in samples.items() if k.startswith(prefix)}


async def test_a_scrape_counts_outcomes_and_shows_parks_pauses_failures_unrouted_and_depths(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """N successes, a park after one transient failure, two failed orders (one skipped),
    a pause and an unrouted item: the scrape shows exactly those numbers."""
    clients = tmp_path / "clients.toml"
    clients.write_text(clients_toml(shop.url, ["acme", "globex"]))
    port = free_port()
    shop.script["X"] = [503, 422]
    shop.always.update({"SO-1": 422, "SO-2": 422})
    settings = settings_for(prefix, tmp_path, clients_file=clients, http_port=port,
                            depth_refresh=0.1)
    async with running(settings) as sup:
        for n in range(N):
            await amqp.publish("acme", type_="system.noop", payload={}, message_id=f"N{n}")
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        await amqp.order("globex", "SO-1")
        await amqp.order("globex", "SO-2")
        await amqp.publish("initech", type_="system.noop", payload={}, message_id="U1")
        await amqp.wait_event("client.parked", "acme")
        await amqp.wait_event("item.unrouted", "initech")
        await wait_until(lambda: len(sup.state.view.failed) == 2, 15, "two failed orders")
        await sup.ops.skip_failed("SO-2", actor="tester", reason="duplicate")
        await sup.ops.pause("globex", actor="tester")
        await sup.depth_cache.refreshed()  # depths are walked in the background
        samples = await scrape_metrics(port)
    assert family(samples, "s2s_items_total") == {
        's2s_items_total{outcome="succeeded",queue="blocking",type="system.noop"}': N,
        's2s_items_total{outcome="failed_transient",queue="blocking",type="product.sync"}': 1,
        's2s_items_total{outcome="failed_final",queue="blocking",type="product.sync"}': 1,
        's2s_items_total{outcome="failed_final",queue="nonblocking",'
        'type="order.add_to_source"}': 2,
        's2s_items_total{outcome="skipped",queue="nonblocking",type="order.add_to_source"}': 1,
        's2s_items_total{outcome="unrouted",queue="blocking",type="system.noop"}': 1,
    }
    assert family(samples, "s2s_handler_duration_seconds_count") == {
        's2s_handler_duration_seconds_count{queue="blocking",type="system.noop"}': N,
        's2s_handler_duration_seconds_count{queue="blocking",type="product.sync"}': 2,
        's2s_handler_duration_seconds_count{queue="nonblocking",type="order.add_to_source"}': 2,
    }
    assert samples['s2s_handler_duration_seconds_bucket{le="+Inf",queue="blocking",'
                   'type="system.noop"}'] == N
    assert {name: samples[name] for name in (
        "s2s_clients", "s2s_parked_clients", "s2s_paused_clients", "s2s_failed_items",
        "s2s_unrouted_items", "s2s_nonblocking_queue_depth", "s2s_nonblocking_retry_waiting",
        "s2s_notification_backlog",
    )} == {
        "s2s_clients": 2, "s2s_parked_clients": 1, "s2s_paused_clients": 1,
        "s2s_failed_items": 1, "s2s_unrouted_items": 1, "s2s_nonblocking_queue_depth": 0,
        "s2s_nonblocking_retry_waiting": 0, "s2s_notification_backlog": 0,
    }
    assert 0 <= samples["s2s_client_queue_depth_age_seconds"] < 5
    assert family(samples, "s2s_client_queue_depth{") == {
        's2s_client_queue_depth{client_id="acme"}': 1,  # Y, behind the parked X
        's2s_client_queue_depth{client_id="globex"}': 0,
    }


async def test_without_the_broker_a_scrape_serves_counters_and_state_but_no_broker_gauges(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Links cut and new ones refused: counters and state log gauges still answer; depths,
    unrouted and backlog are left out until the daemon is connected again."""
    clients = tmp_path / "clients.toml"
    clients.write_text(clients_toml(shop.url, ["acme"]))
    port = free_port()
    async with broker_proxy() as proxy:
        settings = settings_for(prefix, tmp_path, amqp_url=proxy.url, clients_file=clients,
                                http_port=port)
        async with running(settings) as sup:
            for n in range(3):
                await amqp.publish("acme", type_="system.noop", payload={}, message_id=f"N{n}")
            await amqp.wait_event("item.succeeded", "acme", 3)
            await wait_until(lambda: sup.depth_cache.walks > 0, 10, "the first depth walk")
            proxy.refusing = True
            proxy.cut()
            await wait_until(lambda: not sup.connected, 10, "the daemon to see the link go")
            down = await scrape_metrics(port)
            proxy.refusing = False
            await wait_until(lambda: sup.connected, 30, "the daemon to reconnect")
            up = await scrape_metrics(port)
    succeeded = 's2s_items_total{outcome="succeeded",queue="blocking",type="system.noop"}'
    assert (down[succeeded], down["s2s_clients"], down["s2s_parked_clients"]) == (3, 1, 0)
    broker_gauges = ('s2s_client_queue_depth{client_id="acme"}', "s2s_unrouted_items",
                     "s2s_nonblocking_queue_depth", "s2s_notification_backlog")
    assert [name for name in broker_gauges if name in down] == []
    assert [up[name] for name in broker_gauges] == [0, 0, 0, 0]
    assert up[succeeded] == 3


async def test_depths_are_read_side_by_side_and_a_missing_queue_answers_none(amqp: Broker):
    """Several channels share the walk; a 404 on one queue does not lose the others."""
    names = [f"{amqp.topo.prefix}.depth.{n}" for n in range(10)]
    async with amqp.connection.channel() as channel:
        for n, name in enumerate(names):
            await channel.declare_queue(name)
            for _ in range(n):
                await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=name)
    try:
        missing = f"{amqp.topo.prefix}.depth.missing"
        depths = await queue_depths(amqp.connection, [names[0], missing, *names[1:]], channels=3)
        assert depths == {missing: None} | {name: n for n, name in enumerate(names)}
    finally:
        async with amqp.connection.channel() as channel:
            for name in names:
                await channel.queue_delete(name)
