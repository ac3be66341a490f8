"""Queue depths by passive declares: a few channels side by side, cached for a few seconds.

A passive `queue.declare` answers the number of messages *ready* in a queue;
an item delivered and unacked (running, parked, or held while paused) is not
counted. A channel answers one synchronous method at a time (aiormq holds a
lock per channel), 260-440 µs a queue here, so 10,000 client queues one
after another take 3-4.5 s; `CHANNELS` channels side by side took 120-230 µs
a queue on this busy 2-core machine, where the broker is the limit
(`bench/depths.py`, bench/RESULTS.md). `DepthCache` keeps an answer for `max_age` seconds, or
`DUTY` times as long as the last walk took if that is longer, so however
often it is asked, walking the queues takes at most a fifth of the time.

Trap: a passive declare of a missing queue closes its channel (404). That
queue answers None and the walk goes on with a fresh channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence

from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, ChannelNotFoundEntity

CHANNELS = 4
MAX_AGE = 5.0  # seconds; quorum queue counts may lag about as long anyway
DUTY = 4  # a walk of T seconds is good for at least DUTY * T seconds

Depths = dict[str, int | None]


async def queue_depths(
    connection: AbstractConnection, names: Sequence[str], channels: int = CHANNELS
) -> Depths:
    """Messages ready in each queue of `names` (None: no such queue)."""
    out: Depths = {}
    todo = iter(names)  # shared: each reader takes the next name
    async with asyncio.TaskGroup() as group:
        for _ in range(min(channels, len(names))):
            group.create_task(_read(connection, todo, out))
    return out


async def _read(connection: AbstractConnection, todo: Iterator[str], out: Depths) -> None:
    channel = await connection.channel(publisher_confirms=False)
    try:
        for name in todo:
            try:
                queue = await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                out[name] = None
                await _close(channel)
                channel = await connection.channel(publisher_confirms=False)
                continue
            out[name] = queue.declaration_result.message_count or 0
    finally:
        await _close(channel)


async def _close(channel: AbstractChannel) -> None:
    if not channel.is_closed:
        with contextlib.suppress(AMQPError, ChannelInvalidStateError, ConnectionError):
            await channel.close()


class DepthCache:
    """`queue_depths` of the same names, answered from memory while fresh."""

    def __init__(self, max_age: float = MAX_AGE) -> None:
        self._max_age = max_age
        self._lock = asyncio.Lock()  # concurrent callers share one walk
        self._names: tuple[str, ...] | None = None
        self._depths: Depths = {}
        self._at = 0.0
        self._fresh_for = 0.0
        self.walks = 0  # how often the broker was asked

    async def get(self, connection: AbstractConnection, names: Sequence[str]) -> Depths:
        """The depths of `names`, read again once stale or when the names changed."""
        key = tuple(names)
        async with self._lock:
            if key != self._names or time.monotonic() - self._at >= self._fresh_for:
                started = time.monotonic()
                self._depths = await queue_depths(connection, key)
                self._names, self._at = key, time.monotonic()
                self._fresh_for = max(self._max_age, DUTY * (self._at - started))
                self.walks += 1
            return self._depths
