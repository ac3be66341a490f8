"""The events log on the real broker: a follower reads on after its connection is lost."""

from __future__ import annotations

import aio_pika
import pytest

from daemon.broker.topology import declare_events_log
from daemon.core.event_log import EventLog
from daemon.core.events import event_body, routing_key
from tests.proxy import broker_proxy
from tests.support import Broker, wait_until

pytestmark = pytest.mark.timeout(60)


async def _publish(amqp: Broker, *clients: str) -> None:
    """A `client.paused` event of each client, confirmed, on the test's own connection."""
    async with amqp.connection.channel(publisher_confirms=True) as channel:
        exchange = await channel.get_exchange(amqp.topo.events, ensure=False)
        for client in clients:
            body = event_body("client.paused", client_id=client, message_id=None, type_=None,
                              queue="blocking", actor="tester")
            await exchange.publish(aio_pika.Message(body),
                                   routing_key=routing_key("client.paused", client))


async def test_a_follower_reads_on_after_a_lost_connection_without_loss_or_repeats(
    amqp: Broker
):
    """Three events read, the link cut, three more published while it is down: once the
    link is back the follower gets exactly those three, from the offset after its last."""
    await declare_events_log(amqp.connection, amqp.topo)
    async with broker_proxy() as proxy:
        connection = await aio_pika.connect_robust(proxy.url, reconnect_interval=0.2)
        try:
            async with EventLog(connection, amqp.topo).follow(None) as follower:
                await _publish(amqp, "a1", "a2", "a3")
                got = [await follower.next(10) for _ in range(3)]
                proxy.refusing = True
                proxy.cut()
                await wait_until(lambda: connection.transport is None, 10, "the link to go")
                await _publish(amqp, "b1", "b2", "b3")
                proxy.refusing = False
                got += [await follower.next(15) for _ in range(3)]
                assert await follower.next(0.3) is None, "nothing more"
        finally:
            await connection.close()
    assert [e.client_id if e else None for e in got] == ["a1", "a2", "a3", "b1", "b2", "b3"]
    offsets = [e.offset for e in got if e]
    assert offsets == list(range(offsets[0], offsets[0] + 6))
