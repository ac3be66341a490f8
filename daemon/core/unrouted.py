"""Announcing unrouted items: `item.unrouted` for each blocking item of an unknown client.

The unrouted exchange is a fanout. Besides `<prefix>.unrouted`, which keeps the
items until their client is registered and they are replayed, it copies each
one to `<prefix>.unrouted.watch` (`daemon.broker.topology`). Every replica consumes
that queue; single active consumer lets one at a time announce. A copy is
acked once its outcome is reported, so a replica that dies first leaves it to
the next (an event may then go out twice: events are announcements).
"""

from __future__ import annotations

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from daemon.broker.topology import Topology
from daemon.core.outcomes import Outcomes

log = structlog.get_logger()


def unrouted_client(message: AbstractIncomingMessage) -> str:
    """The client id an unrouted item was published for: its routing key (pure)."""
    return message.routing_key or str((message.headers or {}).get("client_id", ""))


class UnroutedWatch:
    """Reports each item that lands in the unrouted queue."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology,
                 outcomes: Outcomes) -> None:
        self._connection = connection
        self._topo = topo
        self._outcomes = outcomes
        self._channel: AbstractChannel | None = None

    async def start(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=64)
        # Declared (passively): a robust channel consumes it again after a reconnect.
        queue = await self._channel.declare_queue(self._topo.unrouted_watch, passive=True)
        await queue.consume(self._on_copy)

    async def stop(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def _on_copy(self, message: AbstractIncomingMessage) -> None:
        await self._outcomes.unrouted(unrouted_client(message), message.message_id, message.type)
        await message.ack()
