"""The state log's tail on the real broker: it reads on after whatever stopped its consumer.

The tail's failover after a lost node and a refused consume: tests/daemon/test_brokers.py.
"""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq
import aiormq.abc
import pytest
from structlog.testing import capture_logs

from daemon.broker.tail import StreamTail
from daemon.core.records import Registered
from daemon.core.state import StateLog, declare_state_stream
from tests.support import Broker, wait_until

pytestmark = pytest.mark.timeout(60)


async def test_a_consumer_the_broker_cancels_is_made_again(amqp: Broker):
    """The broker cancels the tail's consumer (here: its stream is deleted, then declared
    again): the tail consumes again, the refusals in between included, and reads on."""
    got: list[bytes] = []

    async def keep(message: aiormq.abc.DeliveredMessage) -> None:
        got.append(message.body)
        await message.channel.basic_ack(message.delivery_tag or 0)

    await declare_state_stream(amqp.connection, amqp.topo)
    tail = StreamTail(amqp.connection, amqp.topo.state, keep, lambda: "first", prefetch=10)
    await tail.open()
    try:
        async with amqp.connection.channel() as channel:
            await channel.default_exchange.publish(aio_pika.Message(b"before"),
                                                   routing_key=amqp.topo.state)
            await wait_until(lambda: got == [b"before"], 10, "the first message")
            with capture_logs() as logs:
                await channel.queue_delete(amqp.topo.state)
                await wait_until(lambda: any(e["event"] == "state.tail_not_resumed"
                                             for e in logs), 10, "a refused consume")
                await declare_state_stream(amqp.connection, amqp.topo)
                await channel.default_exchange.publish(aio_pika.Message(b"after"),
                                                       routing_key=amqp.topo.state)
                await wait_until(lambda: got == [b"before", b"after"], 10,
                                 "the message published after the new consume")
        [lost] = [e for e in logs if e["event"] == "state.tail_lost"]
        assert lost["why"] == "consumer cancelled by the broker"
    finally:
        await tail.close()


async def test_a_first_consume_refused_is_tried_again_before_open_gives_up(amqp: Broker):
    """The first consume is refused (on a cluster: the stream's replica on this node is not
    running yet, as the cluster tests saw; here: the stream is not declared yet): `open`
    tries again with back-off instead of failing the daemon's start, and reads on."""
    got: list[bytes] = []

    async def keep(message: aiormq.abc.DeliveredMessage) -> None:
        got.append(message.body)
        await message.channel.basic_ack(message.delivery_tag or 0)

    tail = StreamTail(amqp.connection, amqp.topo.state, keep, lambda: "first", prefetch=10)
    with capture_logs() as logs:
        opening = asyncio.ensure_future(tail.open())
        await wait_until(lambda: any(e["event"] == "state.tail_not_started" for e in logs), 10,
                         "a refused first consume")
        assert not opening.done()
        await declare_state_stream(amqp.connection, amqp.topo)
        await asyncio.wait_for(opening, 10)
    try:
        refused = [e for e in logs if e["event"] == "state.tail_not_started"]
        assert "NOT_FOUND" in refused[0]["error"], refused
        async with amqp.connection.channel() as channel:
            await channel.default_exchange.publish(aio_pika.Message(b"first"),
                                                   routing_key=amqp.topo.state)
        await wait_until(lambda: got == [b"first"], 10, "the message published after open")
    finally:
        await tail.close()


async def test_a_first_consume_refused_every_time_raises_the_last_refusal(amqp: Broker):
    """Refused every time (the stream is never declared), `open` raises what the broker said
    last, after `attempts` tries, and leaves no channel open."""
    tail = StreamTail(amqp.connection, amqp.topo.state, lambda _m: asyncio.sleep(0),
                      lambda: "first", prefetch=10)
    with capture_logs() as logs, pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await tail.open(attempts=3)
    assert [e["attempt"] for e in logs if e["event"] == "state.tail_not_started"] == [0, 1]
    assert tail._channel is None


async def test_a_tail_that_reads_nothing_while_a_record_of_ours_is_due_consumes_again(
    amqp: Broker,
):
    """The tail's consumer is gone without a word (here: cancelled from our side, so no
    notice comes): `sync` does not wait its whole timeout, the tail consumes again."""
    state = StateLog(amqp.connection, amqp.topo, "test", tail_patience=0.5)
    await state.start()
    try:
        channel = state._tail._channel if state._tail else None
        assert isinstance(channel, aiormq.Channel)
        for tag in list(channel.consumers):
            await channel.basic_cancel(tag)
        with capture_logs() as logs:
            await state.append(Registered(client_id="acme"))
            await state.sync(timeout=10)
        assert state.view.clients == {"acme"}
        assert [e["event"] for e in logs if e["event"].startswith("state.tail")] == [
            "state.tail_stalled", "state.tail_lost", "state.tail_consuming"]
    finally:
        await state.stop()
