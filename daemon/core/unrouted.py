"""Announcing unrouted items: `item.unrouted` for each blocking item of an unknown client.

The unrouted exchange is a fanout. Besides `<prefix>.unrouted`, which keeps the
items until their client is registered and they are replayed, it copies each
one to `<prefix>.unrouted.watch` (`daemon.broker.topology`). Every replica consumes
that queue; single active consumer lets one at a time announce. A copy is
acked once its outcome is reported, so a replica that dies first leaves it to
the next (an event may then go out twice: events are announcements).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from daemon.broker.topology import Topology
from daemon.core.outcomes import Outcomes
from daemon.core.parking import OperationError

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


@asynccontextmanager
async def browse_unrouted(connection: AbstractRobustConnection,
                          topo: Topology) -> AsyncIterator[AbstractQueue]:
    """The unrouted queue on a channel of its own, to read from the head with unacked
    gets (its depth in `declaration_result`); what is not acked goes back in place on exit.

    One browse at a time across replicas: a listing on one replica while
    another replays would split the replay's order. The lock is an
    exclusive queue, `<prefix>.unrouted.lock`: only one connection may
    declare it, and the broker deletes it if that connection dies.
    """
    async with _unrouted_lock(connection, topo):
        channel = await connection.channel(publisher_confirms=False)
        try:
            yield await channel.declare_queue(topo.unrouted, passive=True)
        finally:
            await channel.close()


@asynccontextmanager
async def _unrouted_lock(connection: AbstractRobustConnection, topo: Topology,
                         patience: float = 120.0) -> AsyncIterator[None]:
    name = f"{topo.unrouted}.lock"
    deadline = time.monotonic() + patience
    while True:
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(name, exclusive=True, durable=False, auto_delete=False)
            break
        except aiormq.exceptions.ChannelLockedResource:
            if time.monotonic() > deadline:
                raise OperationError("another replica has been listing or replaying the"
                                     " unrouted items for too long; try again") from None
            await asyncio.sleep(0.1)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await channel.queue_delete(name)
        with contextlib.suppress(Exception):
            await channel.close()
