"""The state log: what must outlive a process, kept in the broker.

A RabbitMQ stream (`<prefix>.state`) holds the typed records of
`daemon.core.records`. Every daemon replica replays it at start-up and then tails
it, folding each record into its `View` (`daemon.core.view`) strictly in offset
order, so every replica builds the same view and any of them can answer the
console. docs/parking.md has the protocol; three habits make it exact:

* **Offset order.** aiormq runs each delivery's callback as its own task;
  the tail applies a record before its first `await`, so tasks started in
  delivery order apply in offset order (DESIGN fact 13). A record at or
  below the last applied offset (a stream re-read from a chunk's start after
  a reconnect) is skipped.
* **Write before announcing.** A record is appended with a publisher
  confirm before anything is said about it.
* **Read-your-writes.** `sync()` appends a marker and waits until the tail
  has read it back: every record written before is applied.

Bounded replay: snapshots of the view are written into the stream as parts
of at most 256 KiB, and `<prefix>.state.snapshot` points at the latest one
(docs/parking.md, "The snapshot").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
import aiormq.abc
import orjson
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractRobustConnection,
)

from common.clock import age_s, utcnow
from daemon.broker.errors import CHANNEL_ERRORS
from daemon.broker.tail import StreamTail
from daemon.broker.topology import (
    Topology,
    declare_client_queue,
    declare_stream,
    declare_topology,
)
from daemon.core.records import (
    Audited,
    Failed,
    Marker,
    Record,
    Registered,
    SnapshotPart,
    decode,
    encode,
)
from daemon.core.view import View
from daemon.tasks import Tasks

log = structlog.get_logger()

_APPEND_ERRORS: tuple[type[BaseException], ...] = (*CHANNEL_ERRORS, RuntimeError)
_SNAPSHOT_ERRORS: tuple[type[BaseException], ...] = (*CHANNEL_ERRORS, TimeoutError)

Listener = Callable[[Record], None]

PREFETCH = 500
# How long start-up waits for anything at all from the snapshot pointer's offset
# before it takes the pointer for one left over from a stream since re-created.
POINTER_PATIENCE = 30.0
# A record of ours, confirmed by the broker, that the tail has not read back this long,
# while it read nothing else either: the tail is stuck, consume again (`_read_back`).
TAIL_PATIENCE = 15.0
PART_BYTES = 256 * 1024
"""No snapshot part is larger than this (one entry larger than it goes alone)."""
KIND = "x-s2s-kind"
"""Header naming a record's kind where the tail may skip it unread (snapshot parts)."""


async def declare_state_stream(connection: AbstractConnection, topo: Topology) -> None:
    """Declare the state log; keep an existing one whose retention arguments differ."""
    await declare_stream(connection, topo.state, topo.state_stream_arguments(),
                         "state.stream_arguments_differ")


async def append_record(channel: AbstractChannel, topo: Topology, record: Record,
                        replica: str, mark: str | None = None) -> None:
    """Append `record` to the state log over a channel with publisher confirms.

    `mark` (the message id property) lets its writer see the record come back.
    """
    headers: dict[str, Any] | None = (
        {KIND: record.kind} if isinstance(record, SnapshotPart) else None)
    await channel.default_exchange.publish(
        aio_pika.Message(encode(record, replica, utcnow()), headers=headers, message_id=mark,
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=topo.state,
    )


async def register_client(connection: AbstractConnection, topo: Topology, client_id: str,
                          actor: str, replica: str, *, via: str | None = None) -> None:
    """Register a client without a daemon: declare its queue, then record it.

    Daemons tailing the log start consuming it; one that is down finds it at start-up.
    With `via` (the CLI's `clients add`), an audit entry follows the registration.
    """
    await declare_state_stream(connection, topo)
    async with connection.channel(publisher_confirms=True) as channel:
        await declare_topology(channel, topo)
        await declare_client_queue(channel, topo, client_id)
        await append_record(channel, topo,
                            Registered(client_id=client_id, actor=actor, op=uuid.uuid4().hex),
                            replica)
        if via is not None:
            await append_record(channel, topo, Audited(actor=actor, via=via, action="register",
                                                       client_id=client_id, outcome="ok"),
                                replica)


@dataclass(frozen=True, slots=True)
class Pointer:
    """What `<prefix>.state.snapshot` holds: where the latest complete snapshot is."""

    snapshot: str
    covers: int  # the view as of this offset
    start: int  # the lowest offset start-up must read (a failed item's record, or covers + 1)
    parts: int

    def dump(self, replica: str) -> bytes:
        return orjson.dumps({"snapshot": self.snapshot, "covers": self.covers,
                             "from": self.start, "parts": self.parts, "replica": replica,
                             "at": utcnow()})

    @classmethod
    def load(cls, body: bytes) -> Pointer | None:
        """The pointer in `body`, or None for anything else (a release-1 snapshot, say)."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        sid, covers, start, parts = (data.get(k) for k in ("snapshot", "covers", "from", "parts"))
        if not (isinstance(sid, str) and isinstance(covers, int) and isinstance(start, int)
                and isinstance(parts, int)):
            return None
        if covers < 0 or parts < 1 or not 0 <= start <= covers + 1:
            return None
        return cls(sid, covers, start, parts)


@dataclass(slots=True)
class Loader:
    """Start-up from a snapshot: gathers its parts and the records it needs, then builds the view.

    Reading starts at `pointer.start`: up to `covers` only `failed` records are
    kept (the snapshot names the ones it needs by offset); after `covers` every
    record is kept in order, to be applied once the view is built.
    """

    pointer: Pointer
    bodies: dict[int, Failed] = field(default_factory=dict)
    parts: dict[int, list[list[Any]]] = field(default_factory=dict)
    after: list[tuple[Record, int]] = field(default_factory=list)

    def take(self, record: Record, offset: int) -> None:
        if isinstance(record, SnapshotPart):
            if record.snapshot == self.pointer.snapshot:
                self.parts[record.index] = record.entries
        elif offset <= self.pointer.covers:
            if isinstance(record, Failed):
                self.bodies[offset] = record
        else:
            self.after.append((record, offset))

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.pointer.parts

    def view(self) -> View:
        entries = [e for i in range(self.pointer.parts) for e in self.parts[i]]
        return View.from_entries(entries, self.bodies)


def pack(entries: list[list[Any]], limit: int = PART_BYTES) -> list[list[list[Any]]]:
    """Entries in parts of at most `limit` bytes of JSON each (pure)."""
    parts: list[list[list[Any]]] = [[]]
    size = 0
    for entry in entries:
        n = len(orjson.dumps(entry)) + 1
        if parts[-1] and size + n > limit:
            parts.append([])
            size = 0
        parts[-1].append(entry)
        size += n
    return parts


class StateLog:
    """Appends records to the stream and keeps `view` current by tailing it.

    One replica (the leader, through `should_snapshot`) writes a snapshot
    every `snapshot_every` records — or every as many records as the view has
    entries, if that is more — and at least every quarter of the retention.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: Topology,
        replica: str,
        *,
        snapshot_every: int = 1000,
        should_snapshot: Callable[[], bool] = lambda: False,
        tail_patience: float = TAIL_PATIENCE,
    ) -> None:
        self.view = View()
        self._tail_patience = tail_patience
        self._connection = connection
        self._topo = topo
        self._replica = replica
        self._listeners: list[Listener] = []
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._last_offset = -1
        self._write: AbstractChannel | None = None
        self._tail: StreamTail | None = None
        self._loader: Loader | None = None
        self._snapshot_every = snapshot_every
        self._should_snapshot = should_snapshot
        self._snapshot_offset = -1
        self._snapshot_at = time.monotonic()
        self._snapshotting: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._pending_sync: asyncio.Future[None] | None = None  # a marker not sent yet
        self._sending = Tasks()  # markers on their way
        self.replayed = 0  # records applied at start-up (after the snapshot)
        self._records_read = 0

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(record)` for every new record, after the view applied it."""
        self._listeners.append(listener)

    @property
    def last_offset(self) -> int:
        """The offset of the last record read (every record up to it is applied)."""
        return self._last_offset

    # -- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        """Open the channels, replay the log from the latest snapshot and keep tailing it."""
        for attempt in range(6):
            try:
                await asyncio.wait_for(self._connection.connected.wait(), 60)
                await self._start()
                break
            except Exception:  # aiormq raises a plain RuntimeError on a closed connection
                # RabbitMQ 3.10 may refuse a basic.get or consume right after a quorum
                # queue's declaration (noproc, INTERNAL_ERROR closing the connection).
                if attempt == 5:
                    raise
                log.warning("state.start_retry", attempt=attempt, exc_info=True)
                await self.stop()
                await asyncio.sleep(0.2 * 2**attempt)
        self._ticker = asyncio.ensure_future(self._tick())

    async def _start(self) -> None:
        self._reset(View(), -1)
        await declare_state_stream(self._connection, self._topo)
        self._write = await self._connection.channel(publisher_confirms=True)
        pointer = await self._read_pointer()
        if pointer is not None:
            self._loader = Loader(pointer)
        await self._open_tail()  # from the pointer's start, or the first record
        try:
            await self.sync(timeout=POINTER_PATIENCE if pointer else 300.0)
        except TimeoutError:
            if pointer is None or self._last_offset >= 0:
                raise
            # Not even our own marker came back: the stream ends before the pointer.
            log.error("state.pointer_beyond_stream", snapshot=pointer.snapshot,
                      error=f"the snapshot pointer in {self._topo.state_snapshot!r} names"
                      f" offset {pointer.start}, but the state stream {self._topo.state!r}"
                      f" delivered nothing from there in {POINTER_PATIENCE:g} s: the stream"
                      " was deleted or replaced since; reading it from its first record")
            await self._replay_from_first()
        if self._loader is not None:  # the pointer named parts that are not (all) there
            log.error("state.snapshot_incomplete", snapshot=self._loader.pointer.snapshot,
                      parts=self._loader.pointer.parts, found=len(self._loader.parts))
            await self._replay_from_first()
        self.replayed = self._records_read
        view = self.view
        log.info("state.replayed", clients=len(view.clients), parked=len(view.parked),
                 paused=len(view.paused), failed=len(view.failed),
                 from_snapshot=pointer is not None, records=self.replayed)

    async def _replay_from_first(self) -> None:
        await self._close_tail()
        self._reset(View(), -1)
        await self._open_tail()
        await self.sync()

    def _reset(self, view: View, offset: int) -> None:
        self.view = view
        self._last_offset = offset
        self._loader = None
        self._records_read = 0

    async def _read_pointer(self) -> Pointer | None:
        """The latest snapshot's pointer, left in place for the next start-up."""
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(
                self._topo.state_snapshot, durable=True,
                arguments=self._topo.snapshot_queue_arguments(),
            )
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                return None
            await message.nack(requeue=True)
        finally:
            await channel.close()
        pointer = Pointer.load(message.body)
        if pointer is None:
            log.warning("state.pointer_ignored", bytes=len(message.body))
        return pointer

    async def _open_tail(self) -> None:
        self._tail = StreamTail(self._connection, self._topo.state, self._on_delivery,
                                self._next_start, prefetch=PREFETCH)
        await self._tail.open()

    def _next_start(self) -> int | str:
        """Where the tail reads from: after the last record read, else where start-up begins."""
        if self._last_offset >= 0:
            return self._last_offset + 1
        return self._loader.pointer.start if self._loader else "first"

    async def _close_tail(self) -> None:
        tail, self._tail = self._tail, None
        if tail is not None:
            await tail.close()

    async def stop(self) -> None:
        """Stop snapshotting, then close both channels."""
        for task in (self._ticker, self._snapshotting):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._sending.stop()
        await self._close_tail()
        if self._write is not None and not self._write.is_closed:
            with contextlib.suppress(*CHANNEL_ERRORS):
                await self._write.close()

    # -- writing ---------------------------------------------------------------------

    async def append(self, record: Record, patience: float = 300.0,
                     mark: str | None = None) -> None:
        """Append one record, confirmed by the broker before this returns.

        Survives a reconnect: a record that must be written (a park, say) waits
        for the robust connection to come back, up to `patience` seconds.
        """
        assert self._write is not None, "StateLog.start() first"
        deadline = time.monotonic() + patience
        for attempt in itertools.count():
            try:
                await append_record(self._write, self._topo, record, self._replica, mark)
            except _APPEND_ERRORS:
                if time.monotonic() > deadline:
                    raise
                log.info("state.append_retry", kind=record.kind, attempt=attempt)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
            else:
                return

    async def sync(self, timeout: float = 300.0) -> None:
        """Return once every record appended before this call is in `view`.

        Callers that come together share one marker: a marker that is not yet
        published takes any number of waiters, since it goes out after all of
        them asked (a thousand consumers placed at start-up, say, cost a few
        markers, not a thousand).
        """
        waiter = self._pending_sync
        if waiter is None:
            waiter = self._pending_sync = asyncio.get_running_loop().create_future()
            self._sending.spawn(self._send_marker(waiter))
        async with asyncio.timeout(timeout):
            await asyncio.shield(waiter)

    async def append_and_read(self, record: Record, timeout: float = 300.0) -> None:
        """Append `record` and return once it is in `view`, and so is all before it.

        What `append` then `sync` promise, one round trip sooner: the record
        marks itself (its message id), so no marker follows it (issue 17: each
        broker round trip is slow when the broker is busy).
        """
        mark = uuid.uuid4().hex
        waiter = self._markers[mark] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.append(record, mark=mark)
                await self._read_back(waiter)
        finally:
            self._markers.pop(mark, None)

    async def _send_marker(self, waiter: asyncio.Future[None]) -> None:
        await asyncio.sleep(0)  # whoever asks in this turn of the loop rides along
        self._pending_sync = None  # from now on a caller needs a marker sent after it
        marker = uuid.uuid4().hex
        self._markers[marker] = waiter
        try:
            await self.append(Marker(id=marker))
            await self._read_back(waiter)
        except BaseException as exc:
            if not waiter.done():
                waiter.set_exception(exc if isinstance(exc, Exception) else
                                     ConnectionError("the state log stopped"))
                waiter.exception()  # its waiters raise it; nobody left waiting is fine too
        finally:
            self._markers.pop(marker, None)

    async def _read_back(self, waiter: asyncio.Future[None]) -> None:
        """Wait until the tail reads a record we appended (the broker confirmed it).

        A confirmed record is in the stream, so a tail that reads nothing at all
        for `tail_patience` seconds while one is due is stuck, however it got
        so: it consumes again from the record after the last one read (records
        read twice are skipped by offset, so a needless reopen costs a re-read,
        nothing else). The caller's own timeout still bounds the wait.
        """
        while True:
            seen = self._last_offset
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self._tail_patience)
            except TimeoutError:
                if self._last_offset == seen and self._tail is not None:
                    log.warning("state.tail_stalled", last_offset=seen,
                                waited_s=self._tail_patience)
                    self._tail.reopen("stalled: a record of ours not read back")
            else:
                return

    # -- reading ---------------------------------------------------------------------

    async def _on_delivery(self, message: aiormq.abc.DeliveredMessage) -> None:
        self._receive(message)  # before any await: records apply in delivery order
        tag = getattr(message.delivery, "delivery_tag", None)
        if tag is not None:
            with contextlib.suppress(*CHANNEL_ERRORS, RuntimeError):
                await message.channel.basic_ack(tag)

    def _receive(self, message: aiormq.abc.DeliveredMessage) -> None:
        headers = message.header.properties.headers or {}
        offset = headers.get("x-stream-offset")
        if not isinstance(offset, int) or offset <= self._last_offset:
            return
        self._last_offset = offset
        if headers.get(KIND) == "snapshot" and self._loader is None:
            return  # parts matter only at start-up: not even decoded while tailing
        record = decode(message.body)
        if record is None:
            log.warning("state.bad_record", offset=offset, bytes=len(message.body))
            return
        if isinstance(record, Marker):
            waiter = self._markers.get(record.id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if self._loader is not None:
            self._load(record, offset)
        else:
            self._apply(record, offset)
        mark = message.header.properties.message_id
        if mark and self._loader is None:  # a writer waits for it (`append_and_read`)
            waiter = self._markers.get(mark)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _load(self, record: Record, offset: int) -> None:
        loader = self._loader
        assert loader is not None
        loader.take(record, offset)
        if not loader.complete:
            return
        self.view = loader.view()
        self._snapshot_offset = loader.pointer.covers
        self._loader = None
        for later, at in loader.after:
            self._apply(later, at)

    def _apply(self, record: Record, offset: int) -> None:
        if isinstance(record, SnapshotPart):
            return
        self._records_read += 1
        try:
            self.view.apply(record, offset)
        except Exception:  # a bug in the fold: every replica meets it alike
            log.exception("state.apply_failed", offset=offset, kind=record.kind)
            return
        for listener in self._listeners:
            listener(record)
        self._maybe_snapshot()

    # -- snapshots --------------------------------------------------------------------

    def _interval(self) -> int:
        """Records between snapshots: never fewer than the view has entries."""
        v = self.view
        size = (len(v.clients) + len(v.parked) + len(v.paused) + len(v.failed)
                + len(v.pending) + len(v.notify) + len(v.audit))
        return max(self._snapshot_every, size)

    def _maybe_snapshot(self, *, by_time: bool = False) -> None:
        due = by_time or self._last_offset - self._snapshot_offset >= self._interval()
        running = self._snapshotting is not None and not self._snapshotting.done()
        if due and not running and self._should_snapshot():
            self._snapshotting = asyncio.ensure_future(self._write_snapshot_logged())

    async def _tick(self) -> None:
        """Snapshot at least every quarter of the retention, even when little is written."""
        every = self._topo.state_retention_s / 4
        while True:
            await asyncio.sleep(min(60.0, every / 2))
            if time.monotonic() - self._snapshot_at >= every:
                self._maybe_snapshot(by_time=True)

    async def _write_snapshot_logged(self) -> None:
        try:
            await self.write_snapshot()
        except _SNAPSHOT_ERRORS as exc:
            log.warning("state.snapshot_failed", error=repr(exc))

    async def write_snapshot(self) -> None:
        """Write the view as snapshot parts, then point `<prefix>.state.snapshot` at them."""
        assert self._write is not None
        await self._carry()
        await self.sync()
        covers = self._last_offset  # no await from here to the entries: the view as of it
        entries = list(self.view.to_entries())
        start = min([*self.view.body_offsets(), covers + 1])
        parts = pack(entries)
        sid = uuid.uuid4().hex
        for index, chunk in enumerate(parts):
            await self.append(SnapshotPart(snapshot=sid, index=index, parts=len(parts),
                                           covers=covers, entries=chunk), patience=30)
        pointer = Pointer(sid, covers, start, len(parts))
        await self._write.default_exchange.publish(
            aio_pika.Message(pointer.dump(self._replica),
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=self._topo.state_snapshot,
        )
        self._snapshot_offset = covers
        self._snapshot_at = time.monotonic()
        log.info("state.snapshot", offset=covers, start=start, parts=len(parts),
                 entries=len(entries), clients=len(self.view.clients))

    async def _carry(self) -> None:
        """Write again the failed items whose records would soon age out or lie too far back.

        So a snapshot's `from` stays near the tail: each body is written again
        once per carry window, not once per snapshot.
        """
        horizon = self._last_offset - 4 * self._interval()
        old = self._topo.state_retention_s / 2
        entries = [*self.view.failed.values(), *(p.entry for p in self.view.pending.values())]
        carried = 0
        for entry in entries:
            written = entry.record.at or entry.record.failed_at
            if entry.offset < horizon or age_s(written) > old:
                await self.append(entry.record, patience=30)
                carried += 1
        if carried:
            log.info("state.carried", records=carried)
