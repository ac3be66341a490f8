"""A consumer's delivery, read straight from aiormq.

The blocking consumers and the non-blocking pool take deliveries from aiormq
rather than through aio-pika's `IncomingMessage`, whose construction (a
property object and a guarded `__setattr__` per field) cost about a tenth of
the daemon's CPU per item on the hot path (bench/RESULTS.md). `AmqpDelivery`
carries only what they read, and acks or nacks on the channel it came from: a
channel that closed meanwhile raises aiormq's `ChannelInvalidStateError`,
as aio-pika's would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import aiormq.abc


class AmqpDelivery:
    """One delivered message: properties, body, and how to settle it."""

    __slots__ = ("_channel", "_tag", "body", "content_type", "exchange", "headers",
                 "message_id", "redelivered", "routing_key", "timestamp", "type")

    def __init__(self, message: aiormq.abc.DeliveredMessage) -> None:
        props = message.header.properties
        delivery = message.delivery
        self._channel = message.channel
        self._tag: int | None = getattr(delivery, "delivery_tag", None)
        self.body: bytes = message.body
        self.content_type: str | None = props.content_type
        self.headers: dict[str, Any] = dict(props.headers or {})
        self.message_id: str | None = props.message_id
        self.type: str | None = props.message_type
        self.timestamp: datetime | None = props.timestamp
        self.redelivered: bool = bool(getattr(delivery, "redelivered", False))
        self.exchange: str | None = getattr(delivery, "exchange", None)
        self.routing_key: str | None = getattr(delivery, "routing_key", None)

    def __repr__(self) -> str:
        return f"<AmqpDelivery {self.message_id!r} tag={self._tag}>"

    async def ack(self) -> None:
        await self._channel.basic_ack(self._tag or 0)

    async def nack(self, requeue: bool = True) -> None:
        await self._channel.basic_nack(self._tag or 0, requeue=requeue)
