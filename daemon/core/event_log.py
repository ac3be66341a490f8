"""The events log: every event of `<prefix>.events`, kept in a stream and read from any id.

The topology binds the stream `<prefix>.events.log` to the events exchange
with `#` (daemon/broker/topology.py), so each event published there
(daemon/core/events.py) is also kept, for `S2SQ_EVENTS_LOG_RETENTION`
seconds and at most `S2SQ_EVENTS_LOG_MAX_BYTES`. An event's id is its offset
in the stream (the delivery's `x-stream-offset`): a reader that gives the
last id it saw goes on from the next one, without loss and without repeats,
for as long as the stream keeps it.

Each reader (one Server-Sent Events connection, daemon/faces/http/sse.py)
follows the stream with a consumer of its own, a `StreamTail`: consumed
again after a lost connection, from the offset after the last one read.
Why one consumer per reader and not one per daemon fanned out: a reader can
start at any id the stream still holds (a browser that reconnects after a
minute), which a shared consumer at the head cannot serve; a slow reader
holds back only its own consumer (its acks, by prefetch); and there are few
readers (the consoles open at one time), each costing one channel. The gap:
a reader that started at `next` and loses its connection before its first
event starts again at `next` (one that started at a time, `since`, starts
there again).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

import aiormq.abc
import orjson
from aio_pika.abc import AbstractRobustConnection

from daemon.broker.errors import CHANNEL_ERRORS
from daemon.broker.tail import StreamTail
from daemon.broker.topology import Topology

PREFETCH = 100
"""Events a reader's consumer may have unacked: what it reads ahead of its HTTP client."""

EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*")


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One event read from the log: its id (offset), name, client and JSON (one line)."""

    offset: int
    event: str
    client_id: str | None
    data: bytes


def logged_event(offset: int, body: bytes) -> LoggedEvent | None:
    """The event in a record of the log, or None if the record is not one (pure).

    Anyone allowed to publish to the events exchange writes to the log: the
    body is parsed and written again, so what a reader gets is one line of
    JSON whatever came in, and the name is a plain dotted word.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("event")
    if not isinstance(name, str) or not EVENT_NAME.fullmatch(name):
        return None
    client_id = data.get("client_id")
    return LoggedEvent(offset, name, client_id if isinstance(client_id, str) else None,
                       orjson.dumps(data))


def offset_of(message: aiormq.abc.DeliveredMessage) -> int | None:
    offset = (message.header.properties.headers or {}).get("x-stream-offset")
    return offset if isinstance(offset, int) else None


class Follower:
    """One reader's consumer of the log, from after `after`, else from `since` (the first
    event the log holds from that second on), else from the next event."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology,
                 after: int | None, since: datetime | None = None) -> None:
        self._last = after  # the offset of the last event read
        self._since = since
        self._queue: asyncio.Queue[aiormq.abc.DeliveredMessage | None] = asyncio.Queue()
        self._tail = StreamTail(connection, topo.events_log, self._on_delivery, self._start,
                                prefetch=PREFETCH, name="events")
        self.ended = False

    async def open(self) -> None:
        await self._tail.open()

    async def close(self) -> None:
        await self._tail.close()

    def _start(self) -> int | str | datetime:
        if self._last is not None:
            return self._last + 1
        return self._since or "next"

    async def _on_delivery(self, message: aiormq.abc.DeliveredMessage) -> None:
        self._queue.put_nowait(message)  # no await first: kept in delivery order

    async def next(self, timeout: float) -> LoggedEvent | None:
        """The next event; None after `timeout` s without one, or once `end()` was called."""
        while not self.ended:
            try:
                message = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return None
            if message is None:
                break
            await _ack(message)
            offset = offset_of(message)
            if offset is None or (self._last is not None and offset <= self._last):
                continue  # read again after a reopen: already given
            self._last = offset
            event = logged_event(offset, message.body)
            if event is not None:
                return event
        return None

    def end(self) -> None:
        """Make `next` return None now and from now on (the server stops)."""
        self.ended = True
        self._queue.put_nowait(None)


async def _ack(message: aiormq.abc.DeliveredMessage) -> None:
    tag = getattr(message.delivery, "delivery_tag", None)
    if tag is not None:  # a channel closed since: its consumer starts again after this one
        with contextlib.suppress(*CHANNEL_ERRORS, RuntimeError):
            await message.channel.basic_ack(tag)


class EventLog:
    """Where readers follow the events log (the HTTP face is given one)."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._topo = topo

    @asynccontextmanager
    async def follow(self, after: int | None,
                     since: datetime | None = None) -> AsyncIterator[Follower]:
        """Consume the log from after `after` (or from `since`) while the block runs."""
        follower = Follower(self._connection, self._topo, after, since)
        await follower.open()
        try:
            yield follower
        finally:
            await follower.close()
