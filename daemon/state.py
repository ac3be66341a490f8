"""The state log: what must outlive a process, kept in the broker.

A RabbitMQ stream (`<prefix>.state`) holds append-only records: client
registrations, parks, un-parks, pauses and resumes. Every daemon replica
replays it at start-up and then tails it, so each builds the same `View`
(and any replica can answer the console). The parked item itself stays at
the head of its client queue; the log says *why* it is held.

Two habits make it exact (DESIGN.md "State lives in the broker"):

* write before announcing: a park is appended (with a publisher confirm)
  before its event or notification goes out;
* read-your-writes: `sync()` appends a marker and waits until the tail has
  read it back, so every record written before is applied.

A robust channel re-consumes the stream from the first offset after a
reconnect; records already applied are skipped by their `x-stream-offset`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from daemon.topology import Topology, declare_client_queue, declare_topology

log = structlog.get_logger()

Record = dict[str, Any]
Listener = Callable[[Record], None]


def utcnow() -> str:
    """Now as ISO 8601 UTC, the one time format of records and events."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class View:
    """What the log says now: registered clients, parks and pauses."""

    clients: set[str] = field(default_factory=set)
    parked: dict[str, Record] = field(default_factory=dict)
    paused: dict[str, Record] = field(default_factory=dict)

    def apply(self, record: Record) -> None:
        """Fold one record into the view (pure; replaying twice gives the same view)."""
        kind, client = record.get("kind"), record.get("client_id")
        if not isinstance(client, str):
            return
        if kind == "register":
            self.clients.add(client)
        elif kind == "park":
            self.clients.add(client)
            self.parked[client] = record
        elif kind == "unpark":
            current = self.parked.get(client)
            if current is not None and current.get("message_id") == record.get("message_id"):
                del self.parked[client]
        elif kind == "pause":
            self.paused[client] = record
        elif kind == "resume":
            self.paused.pop(client, None)


async def append_record(
    channel: AbstractChannel, topo: Topology, record: Record, replica: str
) -> None:
    """Append `record` to the state log over a channel with publisher confirms."""
    body = orjson.dumps({**record, "replica": replica, "at": utcnow()})
    await channel.default_exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=topo.state,
    )


async def register_client(
    channel: AbstractChannel, topo: Topology, client_id: str, actor: str, replica: str
) -> None:
    """Register a client without a daemon: declare its queue, then record it.

    Daemons tailing the log start consuming it; one that is down finds it at start-up.
    """
    await declare_topology(channel, topo)
    await declare_client_queue(channel, topo, client_id)
    await append_record(channel, topo, {"kind": "register", "client_id": client_id,
                                        "actor": actor}, replica)


class StateLog:
    """Appends records to the stream and keeps `view` current by tailing it."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology, replica: str) -> None:
        self.view = View()
        self._connection = connection
        self._topo = topo
        self._replica = replica
        self._listeners: list[Listener] = []
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._last_offset = -1
        self._write: AbstractChannel | None = None
        self._tail: AbstractChannel | None = None

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(record)` for every new record, after the view applied it."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Open the channels, replay the whole log and keep tailing it."""
        self._write = await self._connection.channel(publisher_confirms=True)
        self._tail = await self._connection.channel(publisher_confirms=False)
        await self._tail.set_qos(prefetch_count=500)
        queue = await self._tail.declare_queue(
            self._topo.state, durable=True, arguments=self._topo.state_stream_arguments()
        )
        await queue.consume(self._on_record, arguments={"x-stream-offset": "first"})
        await self.sync()
        log.info(
            "state.replayed",
            clients=len(self.view.clients),
            parked=len(self.view.parked),
            paused=len(self.view.paused),
        )

    async def stop(self) -> None:
        """Close both channels."""
        for channel in (self._tail, self._write):
            if channel is not None and not channel.is_closed:
                await channel.close()

    async def append(self, record: Record) -> None:
        """Append one record, confirmed by the broker before this returns."""
        assert self._write is not None, "StateLog.start() first"
        await append_record(self._write, self._topo, record, self._replica)

    async def sync(self, timeout: float = 30.0) -> None:
        """Return once every record appended before this call is in `view`."""
        marker = uuid.uuid4().hex
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._markers[marker] = waiter
        try:
            await self.append({"kind": "marker", "id": marker})
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            self._markers.pop(marker, None)

    async def _on_record(self, message: AbstractIncomingMessage) -> None:
        offset = (message.headers or {}).get("x-stream-offset")
        await message.ack()
        if isinstance(offset, int):
            if offset <= self._last_offset:
                return
            self._last_offset = offset
        try:
            record = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            log.warning("state.bad_record", offset=offset)
            return
        if not isinstance(record, dict):
            return
        if record.get("kind") == "marker":
            waiter = self._markers.get(record.get("id", ""))
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        self.view.apply(record)
        for listener in self._listeners:
            listener(record)
