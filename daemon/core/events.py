"""Lifecycle events on `<prefix>.events` (SPEC section 6).

`event_body` is pure; `Events.publish` sends with routing key
`<event>.<client_id>`. Events are announcements, not state: they go out on
a channel without publisher confirms so the hot path never waits for the
broker (the state log carries what must be durable).
"""

from __future__ import annotations

from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from common.clients import CLIENT_ID_RE
from common.clock import utcnow
from daemon.broker.topology import Topology

log = structlog.get_logger()

EVENTS = (
    "item.succeeded",
    "item.failed",
    "item.skipped",
    "item.unrouted",
    "client.parked",
    "client.resumed",
    "client.paused",
    "client.registered",
    "notification.failed",
)

NOT_AN_ID = "!invalid"
"""The routing-key word of an event about a client id that is not one (an unrouted item's
routing key can be any 255 bytes): no client is called that, so no client's binding gets it."""


def routing_key(event: str, client_id: str) -> str:
    """`<event>.<client_id>`, for a client id that is one (pure)."""
    return f"{event}.{client_id if CLIENT_ID_RE.fullmatch(client_id) else NOT_AN_ID}"


def event_body(
    event: str,
    *,
    client_id: str,
    message_id: str | None,
    type_: str | None,
    queue: str,
    **extra: Any,
) -> bytes:
    """The JSON of one event: the common fields of SPEC section 6 plus `extra`."""
    return orjson.dumps(
        {
            "event": event,
            "client_id": client_id,
            "message_id": message_id,
            "type": type_,
            "queue": queue,
            "at": utcnow(),
            **extra,
        }
    )


class Events:
    """Publishes events; never raises into the caller (an event is not worth an item)."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._topo = topo
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=False)
        self._exchange = await channel.get_exchange(self._topo.events, ensure=False)

    async def publish(
        self,
        event: str,
        *,
        client_id: str,
        message_id: str | None,
        type_: str | None,
        queue: str,
        **extra: Any,
    ) -> None:
        """Publish one event (best effort: a broker hiccup is logged, not raised)."""
        assert self._exchange is not None, "Events.start() first"
        body = event_body(
            event, client_id=client_id, message_id=message_id, type_=type_, queue=queue, **extra
        )
        try:
            await self._exchange.publish(
                aio_pika.Message(body, content_type="application/json"),
                routing_key=routing_key(event, client_id),
                mandatory=False,  # nobody listening is normal: no basic.return (DESIGN fact 7)
            )
        except Exception:
            log.warning("event.not_published", event=event, client_id=client_id, exc_info=True)
