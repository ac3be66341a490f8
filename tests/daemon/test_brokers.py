"""The broker list: URLs for logs without passwords, and failover along it
(daemon/broker/brokers.py)."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from daemon.broker.brokers import (
    FailoverConnection,
    censor,
    connect_robust,
    scrub,
    split_urls,
    where,
)
from daemon.broker.channels import ConsumerChannels
from daemon.broker.topology import Topology
from daemon.core.records import Registered
from daemon.core.state import StateLog, declare_state_stream
from tests.proxy import BrokerProxy, broker_proxy
from tests.support import AMQP_URL, free_port, stays, wait_until


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://daemon:S3CRET@rabbit:5672/v", "amqp://daemon:***@rabbit:5672/v"),
        ("amqps://rabbit/", "amqps://rabbit/"),
    ],
)
def test_a_url_is_censored_for_the_logs(url, shown):
    """The password becomes ***; a URL without one is shown as it is."""
    assert censor(url) == shown


@pytest.mark.parametrize(
    ("url", "address"),
    [("amqp://u:p@n1:5681/", "n1:5681"), ("amqp://n2/", "n2:5672"), ("amqps://n3/", "n3:5671")],
)
def test_where_is_host_and_port_only(url, address):
    """No user, no password, no virtual host."""
    assert where(url) == address


def test_scrub_takes_every_password_of_the_list_out_of_a_text():
    """An error quoting any node's URL loses that node's password."""
    urls = split_urls("amqp://a:PW-ONE@n1/,amqp://b:PW-TWO@n2/,amqp://n3/")
    text = "failed amqp://a:PW-ONE@n1/ then amqp://b:PW-TWO@n2/"
    assert scrub(text, urls) == "failed amqp://a:***@n1/ then amqp://b:***@n2/"


async def _kill_node(dead: BrokerProxy, to: BrokerProxy, connection: FailoverConnection,
                     what: str) -> None:
    """Node `dead` goes (its links cut, new ones refused): wait for `connection` on `to`."""
    dead.refusing = True
    dead.cut()
    await wait_until(lambda: connection.broker == where(to.url)
                     and connection.connected.is_set(), 15, what)


async def test_connect_robust_skips_a_node_that_does_not_answer():
    """The first URL is down: the connection is made to the second."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    connection = await connect_robust([dead, AMQP_URL], "test skip", timeout=5)
    try:
        assert connection.broker == where(AMQP_URL)
    finally:
        await connection.close()


async def test_connect_robust_raises_when_no_node_answers():
    """Every URL is tried once; the last error comes out, without any password."""
    urls = [f"amqp://guest:PW-{n}@127.0.0.1:{free_port()}/" for n in range(2)]
    with pytest.raises(ConnectionError) as info:
        await connect_robust(urls, "test none", timeout=5)
    assert "PW-" not in repr(info.value)


async def test_a_robust_connection_moves_to_the_next_node_when_it_loses_one():
    """Node 1 goes away and refuses: consumers come back through node 2 and still receive."""
    async with broker_proxy() as one, broker_proxy() as two:
        connection = await connect_robust([one.url, two.url], "test failover", timeout=5)
        assert isinstance(connection, FailoverConnection)
        got: list[bytes] = []
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue("", exclusive=False, auto_delete=True)
            async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                got.append(message.body)

            await queue.consume(keep, no_ack=True)
            await _kill_node(one, two, connection, "the connection to come back through node 2")
            await _publish_until_received(connection, queue.name, got)
        finally:
            await connection.close()


async def test_the_consumer_pool_reconnects_to_the_next_node():
    """The pool's own connection fails over too, and reports itself connected again."""
    async with broker_proxy() as one, broker_proxy() as two:
        pool = ConsumerChannels([one.url, two.url], "test pool", 10, lambda _c: False)
        await pool.start()
        try:
            assert pool.broker == where(one.url)
            one.refusing = True
            one.cut()
            await wait_until(lambda: pool.broker == where(two.url) and pool.connected.is_set(),
                             15, "the pool to reconnect through node 2")
        finally:
            await pool.close()


async def _publish_until_received(connection: FailoverConnection, queue: str,
                                  got: list[bytes]) -> None:
    """Publish one message (again while the restored consumer is not back yet) until it comes."""
    async with connection.channel() as channel:
        for _ in range(100):
            await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue)
            try:
                await wait_until(lambda: b"after" in got, 0.2, "")
            except AssertionError:
                continue
            return
    raise AssertionError("the consumer received nothing after the failover")



async def test_a_queue_out_of_reach_does_not_keep_the_connection_down(prefix):
    """A channel whose queue is missing after a reconnect waits alone; the rest work at once.

    On a cluster, a classic queue whose node is down answers NOT_FOUND to every
    declaration; here the queue is simply deleted while the link is cut.
    """
    name = f"{prefix}.out-of-reach"
    async with broker_proxy() as one, broker_proxy() as two:
        connection = await connect_robust([one.url, two.url], "test reach", timeout=5)
        try:
            async with connection.channel() as admin:
                await admin.declare_queue(name, durable=False, auto_delete=False)
            watch = await connection.channel()  # as daemon/core/unrouted.py: passive, then consume
            queue = await watch.declare_queue(name, passive=True)
            got: list[bytes] = []

            async def keep(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                got.append(message.body)

            await queue.consume(keep, no_ack=True)
            other = await connection.channel()
            async with connection.channel() as admin:
                await admin.queue_delete(name)
            await _kill_node(one, two, connection,
                             "the connection to come back without the missing queue")
            # It stays up (aio-pika alone would drop it and try again every second)...
            await stays(lambda: connection.connected.is_set(), 2.5, "the connection dropped")
            await other.declare_queue(f"{name}.other", auto_delete=True)  # ...and is usable
            async with connection.channel() as admin:
                await admin.declare_queue(name, durable=False, auto_delete=False)
            await _publish_until_received(connection, name, got)
        finally:
            async with connection.channel() as admin:
                await admin.queue_delete(name)
            await connection.close()


@pytest.mark.parametrize("gap", [0.0, 0.001, 0.002, 0.003, 0.004])
async def test_the_state_log_reads_on_after_a_second_loss_during_the_restore(prefix, gap):
    """Node 1 dies, and node 2 closes the new connection while channels are restored
    (RabbitMQ's 541 nodedown close): the state log's tail reads on through node 3."""
    topo = Topology(prefix)
    async with broker_proxy() as one, broker_proxy() as two, broker_proxy() as three:
        connection = await connect_robust([one.url, two.url, three.url], "test tail", timeout=5)
        await declare_state_stream(connection, topo)
        state = StateLog(connection, topo, "test")
        try:
            await state.start()
            await _kill_node(one, two, connection, "node 2")
            await asyncio.sleep(gap)
            await _kill_node(two, three, connection, "node 3")
            await state.append(Registered(client_id="acme", actor="test", op="1"))
            await state.sync(timeout=10)
            assert state.view.clients == {"acme"}
        finally:
            await state.stop()
            async with connection.channel() as admin:
                await admin.queue_delete(topo.state)
                await admin.queue_delete(topo.state_snapshot)
            await connection.close()


async def test_the_state_log_reads_on_after_the_next_node_refuses_its_consume(prefix):
    """Node 1 dies, and node 2 refuses the tail's first consume (a cluster node does while
    its member of the stream is restarted): the tail consumes again and reads on."""
    topo = Topology(prefix)
    async with broker_proxy() as one, broker_proxy() as two:
        connection = await connect_robust([one.url, two.url], "test refused", timeout=5)
        await declare_state_stream(connection, topo)
        state = StateLog(connection, topo, "test")
        try:
            await state.start()
            two.refuse_consumes(topo.state, 1)
            await _kill_node(one, two, connection, "node 2")
            await state.append(Registered(client_id="acme", actor="test", op="1"))
            await state.sync(timeout=10)
            assert state.view.clients == {"acme"}
            assert two.consumes_refused == 1
        finally:
            await state.stop()
            async with connection.channel() as admin:
                await admin.queue_delete(topo.state)
                await admin.queue_delete(topo.state_snapshot)
            await connection.close()
