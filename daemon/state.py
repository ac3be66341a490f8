"""The state log: what must outlive a process, kept in the broker.

A RabbitMQ stream (`<prefix>.state`) holds append-only records: client
registrations, parks, un-parks, pauses, resumes, failed items and the
notifications decided. Every daemon replica replays it at start-up and then
tails it, so each builds the same `View`
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
import contextlib
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from daemon.notify_rules import fold as fold_notify
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
    failed: dict[str, Record] = field(default_factory=dict)  # non-blocking, by message id
    notify: dict[str, Record] = field(default_factory=dict)  # daemon.notify_rules memory

    def apply(self, record: Record) -> None:
        """Fold one record into the view (pure; replaying twice gives the same view)."""
        kind, client = record.get("kind"), record.get("client_id")
        if kind in ("failed", "unfail"):
            self._apply_failed(kind, record)
            return
        if kind in ("notified", "digest.add", "digest.sent"):
            fold_notify(self.notify, record)
            return
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
        elif kind == "announced":
            current = self.parked.get(client)
            if current is not None and current.get("failed_at") == record.get("failed_at"):
                self.parked[client] = {**current, "announced": True}
        elif kind == "pause":
            self.paused[client] = record
        elif kind == "resume":
            self.paused.pop(client, None)

    def _apply_failed(self, kind: str, record: Record) -> None:
        message_id = record.get("message_id")
        if not isinstance(message_id, str):
            return
        if kind == "failed":
            self.failed[message_id] = record
        else:
            self.failed.pop(message_id, None)

    def snapshot(self) -> Record:
        """The whole view as one record."""
        return {"kind": "snapshot", "clients": sorted(self.clients), "parked": self.parked,
                "paused": self.paused, "failed": self.failed, "notify": self.notify}

    @classmethod
    def from_snapshot(cls, record: Record) -> View:
        return cls(set(record.get("clients", ())), dict(record.get("parked", {})),
                   dict(record.get("paused", {})), dict(record.get("failed", {})),
                   dict(record.get("notify", {})))


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
    """Appends records to the stream and keeps `view` current by tailing it.

    Bounded replay: the stream keeps `x-max-age` of history, and a snapshot of
    the whole view (with the stream offset it covers) is kept in
    `<prefix>.state.snapshot`, a queue of length one. Start-up applies the
    latest snapshot and reads the stream from the offset after it, so it
    takes the same time however long the deployment has run. One replica
    (the leader, through `should_snapshot`) writes a snapshot every
    `snapshot_every` records, well inside the retention age.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: Topology,
        replica: str,
        *,
        snapshot_every: int = 1000,
        should_snapshot: Callable[[], bool] = lambda: False,
    ) -> None:
        self.view = View()
        self._connection = connection
        self._topo = topo
        self._replica = replica
        self._listeners: list[Listener] = []
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._last_offset = -1
        self._write: AbstractChannel | None = None
        self._tail: AbstractChannel | None = None
        self._snapshot_every = snapshot_every
        self._should_snapshot = should_snapshot
        self._snapshot_offset = -1
        self._snapshotting: asyncio.Task[None] | None = None
        self.replayed = 0  # records read at start-up (after the snapshot)
        self._records_read = 0

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(record)` for every new record, after the view applied it."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Open the channels, replay the log from the latest snapshot and keep tailing it."""
        for attempt in range(6):
            try:
                await asyncio.wait_for(self._connection.connected.wait(), 60)
                await self._start()
                return
            except Exception:  # aiormq raises a plain RuntimeError on a closed connection
                # RabbitMQ 3.10 may refuse a basic.get or consume right after a quorum
                # queue's declaration (noproc, INTERNAL_ERROR closing the connection).
                if attempt == 5:
                    raise
                log.warning("state.start_retry", attempt=attempt, exc_info=True)
                await self.stop()
                await asyncio.sleep(0.2 * 2**attempt)

    async def _start(self) -> None:
        self.view = View()
        self._last_offset = -1
        self._records_read = 0
        self._write = await self._connection.channel(publisher_confirms=True)
        self._tail = await self._connection.channel(publisher_confirms=False)
        await self._tail.set_qos(prefetch_count=500)
        queue = await self._tail.declare_queue(
            self._topo.state, durable=True, arguments=self._topo.state_stream_arguments()
        )
        start: int | str = "first"
        snapshot = await self._read_snapshot()
        if snapshot is not None:
            self.view = View.from_snapshot(snapshot)
            self._last_offset = self._snapshot_offset = int(snapshot["offset"])
            start = self._last_offset + 1
        await queue.consume(self._on_record, arguments={"x-stream-offset": start})
        await self.sync()
        self.replayed = self._records_read
        log.info(
            "state.replayed",
            clients=len(self.view.clients),
            parked=len(self.view.parked),
            paused=len(self.view.paused),
            from_snapshot=snapshot is not None,
            records=self.replayed,
        )

    async def _read_snapshot(self) -> Record | None:
        """The latest snapshot, left in place for the next start-up."""
        assert self._tail is not None
        queue = await self._tail.declare_queue(
            self._topo.state_snapshot, durable=True,
            arguments=self._topo.snapshot_queue_arguments(),
        )
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            return None
        await message.nack(requeue=True)
        record = orjson.loads(message.body)
        return record if isinstance(record, dict) and "offset" in record else None

    def _maybe_snapshot(self) -> None:
        due = self._last_offset - self._snapshot_offset >= self._snapshot_every
        running = self._snapshotting is not None and not self._snapshotting.done()
        if due and not running and self._should_snapshot():
            self._snapshotting = asyncio.ensure_future(self.write_snapshot())

    async def write_snapshot(self) -> None:
        """Store the view as of the last applied offset (replaces the previous snapshot)."""
        assert self._write is not None
        offset = self._last_offset
        body = orjson.dumps({**self.view.snapshot(), "offset": offset, "at": utcnow(),
                             "replica": self._replica})
        try:
            await self._write.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=self._topo.state_snapshot,
            )
        except (AMQPError, ChannelInvalidStateError):
            log.warning("state.snapshot_failed", offset=offset, exc_info=True)
            return
        self._snapshot_offset = offset
        log.info("state.snapshot", offset=offset, clients=len(self.view.clients))

    async def stop(self) -> None:
        """Close both channels."""
        for channel in (self._tail, self._write):
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(AMQPError, ChannelInvalidStateError, ConnectionError):
                    await channel.close()

    async def append(self, record: Record, patience: float = 300.0) -> None:
        """Append one record, confirmed by the broker before this returns.

        Survives a reconnect: a record that must be written (a park, say) waits
        for the robust connection to come back, up to `patience` seconds.
        """
        assert self._write is not None, "StateLog.start() first"
        deadline = time.monotonic() + patience
        for attempt in itertools.count():
            try:
                await append_record(self._write, self._topo, record, self._replica)
            except (AMQPError, ChannelInvalidStateError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                log.info("state.append_retry", kind=record.get("kind"), attempt=attempt)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
            else:
                return

    async def sync(self, timeout: float = 300.0) -> None:
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
        self._records_read += 1
        self.view.apply(record)
        for listener in self._listeners:
            listener(record)
        self._maybe_snapshot()
