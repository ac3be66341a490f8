"""The Python producer API: publish items the way SPEC section 3 asks.

Persistent, `application/json`, `message_id`, `type`, the `client_id`
header, a timestamp, and a publisher confirm before returning. Also the
control client used by the CLI: send a control message, wait for the answer.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from daemon.broker.topology import Topology

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's pseudo-queue for answers: consume it (no ack) and publish on one channel."""


def item_message(
    client_id: str, type_: str, payload: Any, *, message_id: str | None = None
) -> aio_pika.Message:
    """An item as SPEC section 3 describes it (payload encoded as JSON unless bytes)."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return aio_pika.Message(
        body,
        content_type="application/json",
        message_id=message_id or uuid.uuid4().hex,
        type=type_,
        headers={"client_id": client_id},
        timestamp=datetime.now(UTC),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class Producer:
    """Publishes items with publisher confirms over one channel."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._topo = topo
        self._channel: AbstractChannel | None = None

    async def _open(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=True)
        return self._channel

    async def publish(
        self,
        client_id: str,
        type_: str,
        payload: Any,
        *,
        message_id: str | None = None,
        queue: Literal["blocking", "nonblocking"] = "blocking",
    ) -> str:
        """Publish one item; returns its message id once the broker confirmed it."""
        message = item_message(client_id, type_, payload, message_id=message_id)
        channel = await self._open()
        name = self._topo.blocking if queue == "blocking" else self._topo.nonblocking
        exchange = await channel.get_exchange(name, ensure=False)
        await exchange.publish(message, routing_key=client_id)
        assert message.message_id is not None
        return message.message_id


class NoAnswer(Exception):
    """Raised when no daemon answered a control message in time."""


async def send_control(
    connection: AbstractRobustConnection,
    topo: Topology,
    request: dict[str, Any],
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Publish one control message and return the first answer.

    The answer comes by direct reply-to: the daemon answers only there or to a
    server-named queue (daemon/faces/control.py), and aio-pika names the queues it
    declares itself (`amq_<uuid>`), so a declared reply queue would not do.
    """
    async with connection.channel() as channel:
        replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        correlation_id = uuid.uuid4().hex

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if message.correlation_id == correlation_id and not answer.done():
                answer.set_result(orjson.loads(message.body))

        await replies.consume(on_reply, no_ack=True)
        control = await channel.get_exchange(topo.control, ensure=False)
        await control.publish(
            aio_pika.Message(orjson.dumps(request), content_type="application/json",
                             correlation_id=correlation_id, reply_to=DIRECT_REPLY_TO),
            routing_key="",
        )
        try:
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            raise NoAnswer(f"no daemon answered within {timeout:g} s") from None
