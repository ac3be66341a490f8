"""The history of what ran: per client, the latest outcomes of its items (SPEC §9, issue 16).

History is an announcement, never state: nothing decides anything from it, and
an entry the broker does not take is logged and dropped.

* **Writing** (`HistoryWriter`). `Outcomes` calls `add` for every outcome — an
  item that succeeded, an attempt that failed, a park, a failed non-blocking
  item, a skip. `add` appends a tuple to a list and awaits nothing: it sits on
  the blocking hot path. A task of the writer publishes what gathered every
  `FLUSH_S` (250 ms) as one message of many clients' entries (at most
  `MAX_BATCH` to a message) to the `<prefix>.history` stream, with a publisher
  confirm; a batch that is refused or not confirmed within `CONFIRM_S` is
  logged (`history.not_written`) and dropped. Stopping flushes what is left.
* **Reading** (`HistoryIndex`). Every replica tails the stream
  (`daemon.broker.tail.StreamTail`, as the state log does) into the last
  `keep` entries of each client, in memory. At start-up it reads from now
  minus the stream's maximum age, so a restart keeps the history; after a lost
  consumer it reads on from the record after the last one read.

An entry on the wire is a JSON array: `[at_ms, client_id, message_id, type,
outcome, attempts, duration_ms, error]`; a message is an array of entries. An
entry's place in the stream, `(offset, index in its message)`, orders a
client's entries and is the `before` cursor of a page (`"<offset>-<index>"`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiormq.abc
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from daemon.broker.errors import CHANNEL_ERRORS
from daemon.broker.tail import StreamTail
from daemon.broker.topology import Topology, declare_history_stream
from daemon.settings import Settings
from daemon.tasks import Tasks

log = structlog.get_logger()

FLUSH_S = 0.25  # how often the buffer goes to the stream
MAX_BATCH = 2000  # entries in one message at most
MAX_BUFFER = 100_000  # entries waiting at most (the broker slow or away): the rest dropped
CONFIRM_S = 10.0  # how long a batch waits for its confirm before it is dropped
MAX_DIGITS = 19  # of a cursor's numbers (int() refuses past 4,300: a 500)
PREFETCH = 50  # messages (batches) the tail may hold unacked

_NOT_WRITTEN: tuple[type[BaseException], ...] = (*CHANNEL_ERRORS, RuntimeError, TimeoutError)

SUCCEEDED, FAILED, SKIPPED = "succeeded", "failed", "skipped"

Position = tuple[int, int]  # (stream offset, index in its message)
Row = tuple[Position, int, str | None, str | None, str, int | None, float | None, str | None]
"""One client's entry in the index: position, at_ms, message_id, type, outcome, attempts,
duration_ms, error."""


class HistoryWriter:
    """Gathers outcomes in memory; a task publishes them to the history stream in batches."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._stream = topo.history
        self._buffer: list[tuple[Any, ...]] = []
        self._channel: AbstractChannel | None = None
        self._stopping = asyncio.Event()
        self._tasks = Tasks(part="history")
        self.dropped = 0  # entries not written (buffer full, or refused by the broker)

    def add(self, client_id: str, message_id: str | None, type_: str | None, outcome: str,
            attempts: int | None, duration_ms: float | None, error: str | None) -> None:
        """Note an outcome (on the hot path: a list append, nothing awaited)."""
        if len(self._buffer) < MAX_BUFFER:
            self._buffer.append((int(time.time() * 1000), client_id, message_id, type_,
                                 outcome, attempts, duration_ms, error))
        else:
            self.dropped += 1

    async def start(self) -> None:
        # A batch the stream does not take (it was deleted, say) raises: logged, not lost unseen.
        self._channel = await self._connection.channel(publisher_confirms=True,
                                                       on_return_raises=True)
        self._tasks.spawn(self._run(), name="history.writer")

    async def stop(self) -> None:
        """Write what is buffered (its last flush, within the confirm time), then close."""
        self._stopping.set()
        await self._tasks.stop(CONFIRM_S + 1)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*CHANNEL_ERRORS, RuntimeError):
                await channel.close()
        if self.dropped:
            log.warning("history.dropped", entries=self.dropped)

    async def _run(self) -> None:
        """Flush every `FLUSH_S`, and once more when asked to stop."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), FLUSH_S)
            await self.flush()
            if self._stopping.is_set():  # (set even before the first turn: flushed all the same)
                return

    async def flush(self) -> None:
        """Publish what is buffered, `MAX_BATCH` entries a message; log and drop a refusal."""
        batch, self._buffer = self._buffer, []
        for start in range(0, len(batch), MAX_BATCH):
            chunk = batch[start:start + MAX_BATCH]
            try:
                await asyncio.wait_for(self._publish(orjson.dumps(chunk)), CONFIRM_S)
            except _NOT_WRITTEN as exc:
                self.dropped += len(chunk)
                log.warning("history.not_written", entries=len(chunk), error=repr(exc))

    async def _publish(self, body: bytes) -> None:
        channel = self._channel
        if channel is None:
            raise RuntimeError("the history writer is not started")
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=self._stream,
                                               mandatory=True)


class HistoryIndex:
    """The last `keep` entries of every client, read from the history stream."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology, *, keep: int,
                 replay_s: float) -> None:
        self._connection = connection
        self._topo = topo
        self._keep = keep
        self._replay_s = replay_s
        self._clients: dict[str, deque[Row]] = {}
        self._last_offset = -1
        self._tail: StreamTail | None = None

    async def start(self) -> None:
        self._tail = StreamTail(self._connection, self._topo.history, self._on_delivery,
                                self._next_start, prefetch=PREFETCH, name="history")
        await self._tail.open()

    async def stop(self) -> None:
        tail, self._tail = self._tail, None
        if tail is not None:
            await tail.close()

    def _next_start(self) -> int | datetime:
        if self._last_offset >= 0:
            return self._last_offset + 1
        return datetime.now(UTC) - timedelta(seconds=self._replay_s)

    async def _on_delivery(self, message: aiormq.abc.DeliveredMessage) -> None:
        offset = (message.header.properties.headers or {}).get("x-stream-offset")
        if isinstance(offset, int) and offset > self._last_offset:
            self._last_offset = offset
            if not take(self._clients, offset, message.body, self._keep):
                log.warning("history.bad_batch", offset=offset, bytes=len(message.body))
        tag = getattr(message.delivery, "delivery_tag", None)
        if tag is not None:
            with contextlib.suppress(*CHANNEL_ERRORS, RuntimeError):
                await message.channel.basic_ack(tag)

    def page(self, client_id: str, limit: int,
             before: Position | None) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` of the client's entries, newest first, before `before`; the next
        page's cursor (None at the end)."""
        return page(self._clients.get(client_id, ()), limit, before)


@asynccontextmanager
async def history_parts(
    connection: AbstractRobustConnection, settings: Settings, *, index: bool,
) -> AsyncIterator[tuple[HistoryWriter | None, HistoryIndex | None]]:
    """The writer (and, with `index`, the index) of one process, started; neither if
    S2SQ_HISTORY is off. On the way out the writer flushes what it holds."""
    if not settings.history:
        yield None, None
        return
    topo = settings.topology()
    await declare_history_stream(connection, topo)
    writer = HistoryWriter(connection, topo)
    await writer.start()
    reader = None
    try:
        if index:
            reader = HistoryIndex(connection, topo, keep=settings.history_per_client,
                                  replay_s=settings.history_max_age)
            await reader.start()
        yield writer, reader
    finally:
        if reader is not None:
            await reader.stop()
        await writer.stop()


# -- pure ------------------------------------------------------------------------------


def take(clients: dict[str, deque[Row]], offset: int, body: bytes, keep: int) -> bool:
    """Fold one message of entries into `clients` (pure but for `clients`); False if bad.

    Entries of a wrong shape are skipped (another version may have written them).
    """
    try:
        entries = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(entries, list):
        return False
    ok = True
    for index, entry in enumerate(entries):
        if not _well_formed(entry):
            ok = False
            continue
        at, client_id, message_id, type_, outcome, attempts, duration_ms, error = entry
        rows = clients.get(client_id)
        if rows is None:
            rows = clients[client_id] = deque(maxlen=keep)
        # Types and outcomes repeat: one string each, not one per entry (a third of the size).
        rows.append(((offset, index), at, message_id,
                     sys.intern(type_) if isinstance(type_, str) else None, sys.intern(outcome),
                     attempts, duration_ms, error))
    return ok


def _well_formed(entry: Any) -> bool:
    return (isinstance(entry, list) and len(entry) == 8  # the wire format
            and isinstance(entry[0], int) and isinstance(entry[1], str)
            and entry[4] in (SUCCEEDED, FAILED, SKIPPED))


def page(rows: Sequence[Row], limit: int,
         before: Position | None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first: up to `limit` rows placed before `before`, and the next page's cursor."""
    taken: list[Row] = []
    for row in reversed(rows):
        if before is not None and row[0] >= before:
            continue
        if len(taken) == limit:
            return [as_item(r) for r in taken], cursor(taken[-1][0])
        taken.append(row)
    return [as_item(r) for r in taken], None


def as_item(row: Row) -> dict[str, Any]:
    """A row as the API answers it."""
    _, at, message_id, type_, outcome, attempts, duration_ms, error = row
    return {"at": iso(at), "message_id": message_id, "type": type_, "outcome": outcome,
            "attempts": attempts, "duration_ms": duration_ms, "error": error}


def iso(at_ms: int) -> str:
    """Milliseconds since the epoch in the one time format (common.clock.utcnow's)."""
    when = datetime.fromtimestamp(at_ms / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cursor(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def parse_cursor(text: str) -> Position | None:
    """A cursor back as a position; None if it is not one."""
    offset, sep, index = text.partition("-")
    if not sep or not all(p.isascii() and p.isdigit() and len(p) <= MAX_DIGITS
                          for p in (offset, index)):
        return None
    return int(offset), int(index)
