"""Announcing unrouted items: `item.unrouted` for each blocking item of an unknown client.

The unrouted exchange is a fanout. Besides `<prefix>.unrouted`, which keeps the
items until their client is registered and they are replayed, it copies each
one to `<prefix>.unrouted.watch` (`daemon.broker.topology`). Every replica consumes
that queue; single active consumer lets one at a time announce. A copy is
acked once its outcome is reported, so a replica that dies first leaves it to
the next (an event may then go out twice: events are announcements).

`list_unrouted` and `replay_unrouted` read the unrouted queue from its head
(`browse_unrouted`) for the admin actions of the same names.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
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

# A queue is read from its head only, and every get carries a whole body, so a
# listing of unrouted items stops at whichever comes first of: the items it
# answers, UNROUTED_SCAN_ITEMS messages read (one client's among others'), or
# UNROUTED_SCAN_BYTES of bodies read (the read that crosses it is the last).
UNROUTED_LIMIT = 100
UNROUTED_MAX_LIMIT = 1000
UNROUTED_SCAN_ITEMS = 10_000
UNROUTED_SCAN_BYTES = 16 * 1024 * 1024

PublishConfirmed = Callable[..., Awaitable[Any]]
"""`Runtime.publish_confirmed`: publish a message and wait for the broker's confirm."""


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


async def list_unrouted(connection: AbstractRobustConnection, topo: Topology,
                        client_id: str | None, limit: int) -> dict[str, Any]:
    """The oldest unrouted items (one client's, given `client_id`): `{"items", "more",
    "total"}`, bounded as UNROUTED_* say.

    `more` is true when the listing stopped before the end of the queue; `total` is
    the queue's depth, None for one client's listing (the others are not its business).
    """
    items: list[dict[str, Any]] = []
    read = read_bytes = 0
    async with browse_unrouted(connection, topo) as queue:
        depth = queue.declaration_result.message_count or 0
        while (len(items) < limit and read < UNROUTED_SCAN_ITEMS
               and read_bytes < UNROUTED_SCAN_BYTES):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                depth = read
                break
            read, read_bytes = read + 1, read_bytes + len(message.body)
            if client_id is None or unrouted_client(message) == client_id:
                items.append({"message_id": message.message_id,
                              "client_id": unrouted_client(message), "type": message.type})
    return {"items": items, "more": read < depth, "total": depth if client_id is None else None}


async def replay_unrouted(connection: AbstractRobustConnection, topo: Topology,
                          publish_confirmed: PublishConfirmed, client_id: str) -> int:
    """Append the client's unrouted items to the tail of its queue, in original order: how many.

    Read one at a time: another client's item is left unacked (it goes back in
    place when the browse ends) and not kept in memory.
    """
    replayed = 0
    async with browse_unrouted(connection, topo) as queue:
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            if unrouted_client(message) != client_id:
                continue
            await publish_confirmed(_republish(message), routing_key=client_id,
                                    exchange=topo.blocking)
            await message.ack()
            replayed += 1
    return replayed


def _republish(message: AbstractIncomingMessage) -> aio_pika.Message:
    """A copy of an unrouted item with every property a producer set."""
    return aio_pika.Message(
        message.body, headers=dict(message.headers or {}), content_type=message.content_type,
        content_encoding=message.content_encoding, message_id=message.message_id,
        type=message.type, timestamp=message.timestamp, correlation_id=message.correlation_id,
        app_id=message.app_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
