"""The topology as the broker sees it: idempotent declares, the quorum delivery limit, the
events log."""

from __future__ import annotations

import asyncio
import dataclasses

import aio_pika
import pytest
from structlog.testing import capture_logs

from daemon.broker.producer import item_message
from daemon.broker.topology import (
    Topology,
    declare_client_queue,
    declare_events_log,
    declare_topology,
)
from daemon.core.event_log import EventLog
from tests.support import Broker

pytestmark = pytest.mark.timeout(60)


async def test_declaring_the_topology_twice_is_harmless(amqp: Broker):
    """Every daemon declares everything at start-up; a second declare changes nothing."""
    async with amqp.connection.channel() as channel:
        await declare_topology(channel, amqp.topo)
        await declare_topology(channel, amqp.topo)
        await amqp.register("acme")
        queue = await declare_client_queue(channel, amqp.topo, "acme")
        assert queue.name == f"{amqp.topo.prefix}.blocking.acme"


async def test_an_item_over_the_delivery_limit_is_dead_lettered_not_dropped(prefix, amqp: Broker):
    """x-delivery-limit is set with a dead-letter target: the item ends in <prefix>.deadletter."""
    topo = Topology(prefix, "quorum", delivery_limit=2)
    async with amqp.connection.channel(publisher_confirms=True) as channel:
        queue = await declare_client_queue(channel, topo, "acme")
        await channel.default_exchange.publish(
            item_message("acme", "system.noop", {}, message_id="poison"), routing_key=queue.name)
    for _ in range(3):  # delivered three times, the channel closed each time as by a crash
        assert await _deliver_and_drop(amqp, queue.name) == "poison"
    dead: list[str | None] = []

    async def dead_lettered() -> bool:
        dead[:] = [m.message_id for m in await amqp.queue_messages(topo.deadletter)]
        return bool(dead)

    deadline = asyncio.get_running_loop().time() + 10
    while not await dead_lettered():
        assert asyncio.get_running_loop().time() < deadline, "nothing reached the dead letters"
        await asyncio.sleep(0.05)
    assert dead == ["poison"]
    async with amqp.connection.channel() as channel:
        await channel.queue_delete(queue.name)


async def _deliver_and_drop(amqp: Broker, queue_name: str) -> str | None:
    """Consume one delivery and close the channel without acking it."""
    got: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if not got.done():
            got.set_result(message.message_id)

    async with amqp.connection.channel() as channel:
        await channel.set_qos(prefetch_count=1)
        q = await channel.get_queue(queue_name, ensure=False)
        await q.consume(on_message)
        return await asyncio.wait_for(got, 5)


async def test_an_events_log_made_with_other_limits_is_kept_and_still_bound(amqp: Broker):
    """A daemon whose events-log settings changed starts anyway (a warning; a policy changes
    a stream's limits) and the log still gets every event."""
    older = dataclasses.replace(amqp.topo, events_log_retention_s=60)
    await declare_events_log(amqp.connection, older)
    with capture_logs() as logs:
        await declare_events_log(amqp.connection, amqp.topo)
    assert [line["event"] for line in logs] == ["events.log_arguments_differ"]
    async with amqp.connection.channel(publisher_confirms=True) as channel:
        events = await channel.get_exchange(amqp.topo.events, ensure=False)
        await events.publish(aio_pika.Message(b'{"event": "client.paused"}'),
                             routing_key="client.paused.acme")
    async with EventLog(amqp.connection, amqp.topo).follow(after=-1) as follower:
        event = await follower.next(timeout=10)
    assert event is not None
    assert (event.offset, event.event) == (0, "client.paused")
