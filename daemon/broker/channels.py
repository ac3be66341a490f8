"""Client consumers on a bounded number of channels, and their recovery.

Client consumers live on their own, non-robust AMQP connection, grouped at
most `per_channel` to a channel. We recover them ourselves rather than let
aio-pika's robust channel re-consume on the same channel, because where a
consumer goes back to matters:

* `consumer_timeout` (DESIGN.md fact 3) closes the *whole channel* that holds
  a long park, requeueing every delivery on it. After such a close, parked
  clients go back on channels of their own ("parked" groups), busy ones on
  "busy" groups, so a park never again takes busy clients down with it. With
  the broker set up as `rabbitmq.conf` says, the timeout does not fire at all.
* Delivery tags belong to their channel: a consumer drops the old channel's
  deliveries (`channel_lost`) before it is placed again.

A lost connection (broker restart, network) closes every channel; the pool
reconnects with back-off and places every consumer again (it reconnects even
with no consumer to place, so that `connected` comes back). Given several
broker URLs (nodes of one cluster), it reconnects to the next node first, round
the list (daemon/broker/brokers.py).

With several replicas (docs/replicas.md), groups also carry a *label*: the
replica each member's client prefers, when the group was opened
(`daemon.broker.replicas`). A group only ever holds clients of one label, so that
`cycle` — hold, wait until idle, close, place again at the back of each
queue's line of consumers — moves exactly the clients that should move.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection

from daemon.broker.brokers import connect_first, scrub, where
from daemon.tasks import Tasks

log = structlog.get_logger()

RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
# Channels filled side by side while many consumers start at once (start-up, a
# reconnect): a channel answers one method at a time, and declaring a quorum
# queue takes the broker about 9 ms on one channel but 4 ms a queue over 8-16
# (bench/RESULTS.md, "Many clients on one node").
FILLING = 16
PLACING = 4 * FILLING  # consumers started at once: each filling channel has the next queued


class Placeable(Protocol):
    """What the pool needs of a consumer."""

    client_id: str

    @property
    def parked(self) -> Any: ...

    async def start(self, channel: AbstractChannel) -> None: ...

    def channel_lost(self) -> None: ...

    @property
    def busy(self) -> bool: ...

    @property
    def holds_park(self) -> bool: ...

    def hold(self) -> None: ...

    def unhold(self) -> None: ...

    async def wait_idle(self) -> None: ...


class Lines(Protocol):
    """Which replica a client prefers, and what a group's replica knew when it opened."""

    def label(self, client_id: str) -> str: ...

    def stamp(self) -> Any: ...

    def placed(self, label: str) -> None: ...


@dataclass(eq=False)
class Group:
    """One channel and the consumers on it."""

    channel: AbstractChannel
    parked: bool
    members: list[Placeable] = field(default_factory=list)
    lost: bool = False
    starting: int = 0  # members whose start (declare, consume) is under way
    label: str = ""  # the replica its clients prefer (daemon.broker.replicas); "" with one replica
    stamp: Any = None  # what `Lines.stamp` said when it opened


class ConsumerChannels:
    """Places consumers on channels and puts them back after a channel or connection loss."""

    def __init__(
        self, urls: Sequence[str], name: str, per_channel: int,
        is_parked: Callable[[str], bool], lines: Lines | None = None,
    ) -> None:
        self._urls = tuple(urls)
        self._at = 0  # the URL in use, or to try first
        self._name = name
        self._per_channel = per_channel
        self._is_parked = is_parked
        self._lines = lines
        self._connection: AbstractConnection | None = None
        self._groups: list[Group] = []
        self._lock = asyncio.Lock()
        self._closing = False
        self._recovering = Tasks()
        self.connected = asyncio.Event()
        self.recoveries = 0  # consumer groups placed again after a loss (for tests and metrics)

    @property
    def broker(self) -> str:
        """host:port of the node the pool uses (or tries next, while disconnected)."""
        return where(self._urls[self._at])

    def _text(self, exc: BaseException) -> str:
        """An error for the log, with no password of the broker URLs in it."""
        return scrub(repr(exc), self._urls)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        await self._connect()

    async def close(self) -> None:
        """Close every channel (the broker requeues what they held, at the head), then the link."""
        self._closing = True
        await self._recovering.stop()
        for group in self._groups:
            with contextlib.suppress(Exception):
                await group.channel.close()
        self._groups.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _connect(self) -> AbstractConnection:
        connection, self._at = await connect_first(self._urls, self._at, self._name)
        log.info("broker.connected", broker=where(self._urls[self._at]), connection=self._name)
        connection.close_callbacks.add(self._on_connection_closed)
        self._connection = connection
        self.connected.set()
        return connection

    # -- placing -------------------------------------------------------------------

    async def place_or_recover(self, consumer: Placeable) -> None:
        """Place `consumer`; if the broker refuses now, keep trying in the background."""
        try:
            await self.place(consumer)
        except Exception as exc:
            log.warning("consumer.start_failed", client_id=consumer.client_id,
                        error=self._text(exc))
            self._spawn_recovery([consumer])

    async def place(self, consumer: Placeable) -> None:
        """Start `consumer` on a channel of the right kind (parked or busy)."""
        parked = self._is_parked(consumer.client_id)
        label = self._lines.label(consumer.client_id) if self._lines is not None else ""
        async with self._lock:
            group = await self._group_with_room(parked, label)
            group.members.append(consumer)
            group.starting += 1
        try:
            await consumer.start(group.channel)
        except BaseException:
            with contextlib.suppress(ValueError):
                group.members.remove(consumer)
            raise
        finally:
            group.starting -= 1
        if self._lines is not None:
            self._lines.placed(group.label)

    async def _group_with_room(self, parked: bool, label: str = "") -> Group:
        """The group to place the next consumer in: one of its kind and label with room and
        the fewest starts under way; a new one while every such group is busy starting and
        fewer than FILLING are (so many starts at once spread over FILLING channels)."""
        open_ = [g for g in self._groups
                 if not g.lost and not g.channel.is_closed and g.parked == parked
                 and g.label == label and len(g.members) < self._per_channel]
        if open_:
            group = min(open_, key=lambda g: g.starting)
            if group.starting == 0 or len(open_) >= FILLING:
                return group
        connection = self._connection
        if connection is None or connection.is_closed or not self.connected.is_set():
            connection = await self._connect()
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=1)  # per consumer: strict FIFO
        group = Group(channel, parked, label=label,
                      stamp=self._lines.stamp() if self._lines is not None else None)
        channel.close_callbacks.add(lambda _sender, exc: self._on_channel_closed(group, exc))
        self._groups.append(group)
        log.debug("channel.opened", parked=parked, channels=len(self._groups))
        return group

    # -- handing clients over (daemon.broker.replicas) -------------------------------------

    @property
    def groups(self) -> list[Group]:
        """The groups in use now (a copy)."""
        return [g for g in self._groups if not g.lost]

    async def cycle(self, group: Group, patience: float) -> bool:
        """Close `group`'s channel once its consumers are idle and place them again.

        Each consumer goes to the back of its queue's line: a standby stays a
        standby, an active one hands its queue to the next in line. Nothing is
        cut: new deliveries wait unrun (`hold`) until the channel closes, which
        hands them back at the head; a run going on is waited for. If one is
        still busy after `patience` seconds, or a consumer holds a park (a park
        never moves for balance), the hold ends and nothing changes: False.
        """
        members = list(group.members)
        for consumer in members:
            consumer.hold()
        try:
            waits = [asyncio.ensure_future(c.wait_idle()) for c in members if c.busy]
            if waits:
                _, pending = await asyncio.wait(waits, timeout=patience)
                for fut in pending:
                    fut.cancel()
            if group.lost or any(c.busy or c.holds_park for c in members):
                return False
            group.lost = True  # ours to close: `_lose` leaves it alone
            with contextlib.suppress(ValueError):
                self._groups.remove(group)
            with contextlib.suppress(Exception):
                await group.channel.close()
            for consumer in members:
                consumer.channel_lost()
        finally:
            for consumer in members:
                consumer.unhold()
        log.info("channel.cycled", label=group.label, consumers=len(members))
        await self._recover(members, counted=False)
        return True

    # -- recovery --------------------------------------------------------------------

    def _on_channel_closed(self, group: Group, exc: BaseException | None) -> None:
        self._lose([group], exc)

    def _on_connection_closed(self, _sender: Any, exc: BaseException | None) -> None:
        self.connected.clear()
        if not self._closing:
            log.warning("connection.lost", name=self._name, broker=where(self._urls[self._at]),
                        reason=self._text(exc) if exc else None)
            # The node may be gone: try the next one first (a lone URL stays itself).
            self._at = (self._at + 1) % len(self._urls)
        self._lose(list(self._groups), exc)
        if not self._closing and not self._recovering:
            # No consumer to place again (no clients yet): connect all the same, or
            # `connected`, and with it the daemon's readiness, would never come back.
            self._recovering.spawn(self._reconnect())

    def _lose(self, groups: list[Group], exc: BaseException | None) -> None:
        """Forget the groups' channels and place their consumers again (each group once)."""
        consumers: list[Placeable] = []
        for group in groups:
            if group.lost:
                continue
            group.lost = True
            with contextlib.suppress(ValueError):
                self._groups.remove(group)
            for consumer in group.members:
                consumer.channel_lost()
            consumers += group.members
        if self._closing or not consumers:
            return
        log.warning("channel.lost", consumers=len(consumers),
                    reason=self._text(exc) if exc else None)
        self._spawn_recovery(consumers)

    def _spawn_recovery(self, consumers: list[Placeable]) -> None:
        self._recovering.spawn(self._recover(consumers))

    async def _reconnect(self) -> None:
        """Connect again, retrying with back-off, unless a placement did it meanwhile."""
        for attempt in range(1_000_000):
            try:
                async with self._lock:
                    connection = self._connection
                    if connection is None or connection.is_closed or not self.connected.is_set():
                        await self._connect()
            except Exception as exc:
                log.info("connection.not_recovered_yet", name=self._name, error=self._text(exc))
                await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            else:
                log.info("connection.recovered", name=self._name)
                return

    async def _recover(self, consumers: list[Placeable], *, counted: bool = True) -> None:
        """Place each consumer again (PLACING at once), retrying with back-off until the
        broker takes it.

        `counted`: a loss (False: a cycle, which is no loss) for `recoveries` and the log.
        """
        limit = asyncio.Semaphore(PLACING)

        async def placed(consumer: Placeable) -> bool:
            async with limit:
                try:
                    await self.place(consumer)
                except Exception as exc:
                    log.info("consumer.not_recovered_yet", client_id=consumer.client_id,
                             error=self._text(exc))
                    return False
                return True

        for attempt in range(1_000_000):
            done = await asyncio.gather(*(placed(c) for c in consumers))
            pending = [c for c, ok in zip(consumers, done, strict=True) if not ok]
            if not pending:
                if counted:
                    self.recoveries += 1
                    log.info("channel.recovered", consumers=len(consumers))
                return
            consumers = pending
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
