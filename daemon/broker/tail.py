"""One consumer on a stream, kept going across lost connections, refusals and cancels.

The state log's tail (`daemon.core.state`) must read on after anything the broker
does, or every `sync` waits. It used to be a raw `basic_consume` on an
aio-pika robust channel, consumed again from the channel's reopen callback,
and two things left it dead for good:

* **A consume refused during the restore** — the stall of the cluster tests
  (docs/cluster.md). For a few tens of milliseconds after a stream's leader
  node dies, the other nodes refuse a consume of it: `PRECONDITION_FAILED -
  … does not have a replica on the local node` (the channel is closed) or
  `RESOURCE_ERROR - … does not have a running local replica` (the whole
  connection is). The daemon reconnects to the next node within that time.
  aio-pika was still restoring the channel when the broker closed it, so it
  ignored the close (a channel being restored is not restored again), the
  reopen callback gave up on a closed channel, and aio-pika then marked the
  channel restored: closed, and reopened by nothing until the next lost
  connection.
* **A consumer cancelled by the broker** (`basic.cancel`: the stream
  deleted, say): the channel stays open with no consumer, and aio-pika
  recovers only the consumers it made itself.

So the tail owns a plain channel of the connection's current transport, and
one task (`_keep`) opens it again, from the record after the last one read,
whenever it closes, its consumer is cancelled, or `reopen` asks (a reader
that waits too long for its own record, `StateLog`). Nothing here depends on
aio-pika's restore flags.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

import aiormq.abc
import structlog
from aio_pika.abc import AbstractRobustConnection

from daemon.tasks import cancel_and_wait

log = structlog.get_logger()

OPEN_ATTEMPTS = 7
"""How often `open` tries its first consume: the waits between add up to about 11 s."""

Start = Callable[[], int | str | datetime]
"""Where the next consumer starts (`x-stream-offset`: an offset, "first", or a time): asked
at every (re)open."""


class StreamTail:
    """A consumer on `queue` that a task keeps open; `start()` says from where."""

    def __init__(self, connection: AbstractRobustConnection, queue: str,
                 on_delivery: aiormq.abc.ConsumerCallback, start: Start, *,
                 prefetch: int, name: str = "state") -> None:
        self._connection = connection
        self._queue = queue
        self._on_delivery = on_delivery
        self._start = start
        self._prefetch = prefetch
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._lost: asyncio.Future[str] | None = None  # resolves with why the consumer went
        self._task: asyncio.Task[None] | None = None
        self.opened = 0  # consumers made (the first included)
        # Its log lines: `state.tail_consuming`, `events.tail_lost`, ... (`name` the reader's).
        self._said = {what: f"{name}.tail_{what}" for what in ("consuming", "lost",
                                                                "not_resumed", "not_started")}

    async def open(self, attempts: int = OPEN_ATTEMPTS) -> None:
        """Consume now, then keep consuming; the last of `attempts` refusals raises.

        A stream declared a moment ago may be refused on a node whose replica is
        not running yet (`PRECONDITION_FAILED - … does not have a replica on the
        local node`, seen on a three-node cluster): the first consume is tried
        again with the back-off `_keep` uses, on the connection's current transport
        (none while it reconnects: that try fails too). So `open` waits about 11 s
        at most: the daemon's start-up, or an event stream's request, is not held.
        """
        assert self._task is None, "opened twice"
        for attempt in range(attempts):
            try:
                await self._consume()
                break
            except Exception as exc:
                await self._drop()
                if attempt == attempts - 1:
                    raise
                log.warning(self._said["not_started"], attempt=attempt, error=repr(exc))
                await asyncio.sleep(backoff(attempt))
        self._task = asyncio.ensure_future(self._keep())

    def reopen(self, why: str) -> None:
        """Drop the consumer and consume again, from the record after the last one read."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        await self._drop()

    async def _consume(self) -> None:
        transport = self._connection.transport
        if transport is None or transport.connection.is_closed:
            raise ConnectionError("no connection to consume the stream on")
        channel = await transport.connection.channel(publisher_confirms=False)
        self._channel = channel
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._lost = lost

        def on_close(closing: asyncio.Future[Any]) -> None:
            if not lost.done():
                error = None if closing.cancelled() else closing.exception()
                lost.set_result(f"channel closed: {error!r}")

        def on_cancel(_frame: Any) -> None:
            if not lost.done():
                lost.set_result("consumer cancelled by the broker")

        channel.closing.add_done_callback(on_close)
        channel.on_consumer_cancel_callbacks.add(on_cancel)
        start = self._start()
        await channel.basic_qos(prefetch_count=self._prefetch)
        await channel.basic_consume(self._queue, self._on_delivery,
                                    arguments={"x-stream-offset": start})
        self.opened += 1
        log.info(self._said["consuming"], start=start, channel=channel.number,
                 consumers=self.opened)

    async def _keep(self) -> None:
        """Wait until the consumer goes, then consume again; back off while that fails."""
        attempt = 0
        while True:
            if self._lost is not None:
                why = await self._lost
                log.warning(self._said["lost"], why=why, next_start=self._start())
            await self._drop()
            try:
                await self._connection.ready()
                await self._consume()
            except Exception as exc:  # refused, or the connection went again
                log.warning(self._said["not_resumed"], attempt=attempt, error=repr(exc))
                await self._drop()
                await asyncio.sleep(backoff(attempt))
                attempt += 1
            else:
                attempt = 0

    async def _drop(self) -> None:
        """Close the current channel, if it is still open; forget it."""
        channel, self._channel, self._lost = self._channel, None, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()


def backoff(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th refused consume (0, 1, …): 0.2 doubling to 5."""
    return min(5.0, 0.2 * 2.0**attempt)
