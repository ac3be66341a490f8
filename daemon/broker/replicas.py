"""Several replicas share the work: who is alive, and which replica each client prefers.

Every replica consumes every client queue; single active consumer (SAC)
makes the first consumer in a queue's line the active one, and the broker
moves a queue to the next in line when its holder dies. Left alone, the
replica that registered first would be active on nearly every queue. This
module spreads them (docs/replicas.md):

* **Membership.** Every replica publishes a beat every `BEAT` s on the
  fanout exchange `<prefix>.replicas` and hears everyone's through a queue of
  its own; a replica not heard for `EXPIRE` s is gone. A beat says how often
  the replica has *placed* consumers of the clients it prefers (0: not yet).
* **Preference.** Rendezvous hashing of (client, replica) over the live
  replicas (`preferred`, pure): every replica computes the same answer, and a
  replica that comes or goes moves only its own share of the clients.
* **Lines.** A replica places its preferred clients first (start-up waits
  `settle` s to hear the others), then the rest as standbys, on channels of
  their own labelled with the replica they prefer (`daemon.broker.channels`). A
  group whose clients prefer another replica that has placed its consumers
  *since the group opened* goes to the back of its queues' lines once
  (`ConsumerChannels.cycle`; `needs_cycle`, pure). When every other replica
  did, the preferred one is first in line: active.

Safety never depends on this module: it only closes channels of idle
consumers that hold no park, which SAC and the park protocol already
survive (a replica killed at any moment does the same). Membership that is
wrong or late only makes work run on another replica than it might.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import weakref
from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

import aio_pika
import orjson
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from daemon.broker.channels import Group
from daemon.broker.topology import Topology
from daemon.tasks import cancel_and_wait

log = structlog.get_logger()

BEAT = 1.0  # seconds between beats
EXPIRE = 5.0  # a replica not heard for this long is gone
PATIENCE = 10.0  # how long a cycle waits for a busy consumer before it gives up (for now)
AGAIN_AFTER = 30.0  # ... and how long before it tries that group again


def preferred(client_id: str, replicas: Iterable[str]) -> str:
    """Pure: the replica `client_id` prefers among `replicas` (rendezvous hashing)."""
    def weight(replica: str) -> bytes:
        key = f"{replica}\x00{client_id}".encode()
        return hashlib.blake2b(key, digest_size=8).digest()

    return max(replicas, key=weight)


def needs_cycle(me: str, prefs: Collection[str], stamp: Mapping[str, int],
                placed: Mapping[str, int]) -> bool:
    """Pure: whether a group of replica `me` should go to the back of its queues' lines.

    `prefs`: the replicas its clients prefer now; `stamp`: how often each
    replica had placed its preferred consumers when the group opened;
    `placed`: the same now, for the live replicas that have placed them. A
    client another replica prefers may be active here only if that replica's
    consumer came after ours: that is so when it placed since the group opened.
    """
    return any(p != me and placed.get(p, 0) > stamp.get(p, 0) for p in prefs)


class Pool(Protocol):
    """What the rebalancing needs of the consumer pool (daemon.broker.channels.ConsumerChannels)."""

    @property
    def groups(self) -> list[Group]: ...

    async def cycle(self, group: Group, patience: float) -> bool: ...


class Replicas:
    """This replica's view of the others, its beats, and the moves that spread the work."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology, me: str,
                 settle: float) -> None:
        self.me = me
        self._connection = connection
        self._topo = topo
        self._settle = settle
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._heard: dict[str, float] = {}  # replica -> monotonic time of its last beat
        self._placed: dict[str, int] = {}  # replica -> placements it announced (0: not yet)
        self._count = 0  # our placements announced (0 until start-up placed ours)
        self._dirty = False  # we placed a preferred consumer since the last beat
        self._started = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._moving: asyncio.Task[None] | None = None
        self._closing = False
        self._pool: Pool | None = None
        # Groups whose move gave up (a long run): when to try again. Without it, one client
        # with long items would hold the others of its group most of the time.
        self._again: weakref.WeakKeyDictionary[Group, float] = weakref.WeakKeyDictionary()
        self._wake = asyncio.Event()
        # `preferred` of each client for one live set (a hash per replica per client: looking
        # over 10,000 clients every second took 1.3 % of a core when it was not remembered).
        self._memo_live: frozenset[str] = frozenset()
        self._memo: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Join: hear the others' beats, say hello (they answer at once), beat every BEAT s."""
        self._started = time.monotonic()
        channel = self._channel = await self._connection.channel(publisher_confirms=False)
        exchange = await channel.declare_exchange(self._topo.replicas,
                                                  aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(
            f"{self._topo.replicas}.{self.me}", exclusive=True, auto_delete=True, durable=False,
            arguments={"x-queue-type": "classic"})
        self._exchange = exchange
        await queue.bind(exchange)
        await queue.consume(self._on_beat, no_ack=True)
        await self._send(hello=True)
        self._tasks.append(asyncio.ensure_future(self._beat()))

    async def settled(self) -> None:
        """Return once every live replica has had time to be heard (`settle` s after start)."""
        wait = self._started + self._settle - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        log.info("replicas.known", replicas=sorted(self.live()))

    def watch(self, pool: Pool) -> None:
        """Start moving `pool`'s groups to the back of their lines when they should."""
        self._pool = pool
        self._moving = asyncio.ensure_future(self._rebalance())

    async def stop(self) -> None:
        """Stop moving groups (a move under way ends first) and beating; say we are gone."""
        self._closing = True
        moving, self._moving = self._moving, None
        if moving is not None:
            # Cut mid-way, a move would leave consumers neither on a channel nor lost.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(moving), PATIENCE + 5)
            await cancel_and_wait(moving)
        tasks, self._tasks = self._tasks, []
        for task in tasks:  # the beat
            await cancel_and_wait(task)
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._send(gone=True)
            with contextlib.suppress(Exception):
                await self._channel.close()

    # -- what the pool asks (daemon.broker.channels.Lines) ------------------------------------

    def live(self) -> set[str]:
        """The replicas heard within EXPIRE s, and this one."""
        now = time.monotonic()
        return {r for r, at in self._heard.items() if now - at < EXPIRE} | {self.me}

    def label(self, client_id: str) -> str:
        return self._preferred(client_id, frozenset(self.live()))

    def _preferred(self, client_id: str, live: frozenset[str]) -> str:
        """`preferred(client_id, live)`, remembered until the live set changes."""
        if live != self._memo_live:
            self._memo_live, self._memo = live, {}
        found = self._memo.get(client_id)
        if found is None:
            found = self._memo[client_id] = preferred(client_id, live)
        return found

    def stamp(self) -> dict[str, int]:
        """What the others have announced, the ones missing a beat or two included (a
        group opened then is behind their placements all the same)."""
        return {r: n for r, n in self._placed.items() if n and r != self.me}

    def placed(self, label: str) -> None:
        """A consumer was placed in a group of `label`: if ours, at the back of its line,
        so the others must follow (with the next beat)."""
        if label == self.me and self._count:
            self._dirty = True

    def announced(self) -> dict[str, int]:
        """The other live replicas that have placed their preferred consumers, and how often."""
        live = self.live()
        return {r: n for r, n in self._placed.items() if n and r in live and r != self.me}

    def announce(self) -> None:
        """Our preferred consumers are placed (start-up, a reload): tell the others now."""
        self._count += 1
        self._dirty = False
        self._wake.set()

    def split(self, client_ids: Iterable[str]) -> tuple[list[str], list[str]]:
        """The clients this replica prefers, and the others (each in the given order)."""
        live = frozenset(self.live())
        mine: list[str] = []
        others: list[str] = []
        for client_id in client_ids:
            (mine if self._preferred(client_id, live) == self.me else others).append(client_id)
        return mine, others

    # -- beats ---------------------------------------------------------------------------

    async def _send(self, *, hello: bool = False, gone: bool = False) -> None:
        assert self._exchange is not None
        body = orjson.dumps({"replica": self.me, "placed": self._count, "hello": hello,
                             "gone": gone})
        await self._exchange.publish(aio_pika.Message(body, expiration=EXPIRE), routing_key="")

    async def _beat(self) -> None:
        live = self.live()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEAT):
                    await self._wake.wait()
            self._wake.clear()
            if self._dirty and self._count:
                self._dirty = False
                self._count += 1
            with contextlib.suppress(Exception):
                await self._send()
            now = self.live()
            if now != live:
                log.info("replicas.changed", replicas=sorted(now), joined=sorted(now - live),
                         left=sorted(live - now))
                self._on_change(live, now)
                live = now

    async def _on_beat(self, message: AbstractIncomingMessage) -> None:
        try:
            beat = orjson.loads(message.body)
            replica, placed = str(beat["replica"]), int(beat["placed"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("replicas.bad_beat", body=message.body[:200])
            return
        if replica == self.me:
            return
        if beat.get("gone"):
            self._heard.pop(replica, None)
            self._placed.pop(replica, None)
            self._wake.set()
            return
        known = replica in self._heard
        self._heard[replica] = time.monotonic()
        self._placed[replica] = placed
        if beat.get("hello") or not known:
            self._wake.set()  # answer a newcomer at once, and notice it now

    def _on_change(self, before: set[str], now: set[str]) -> None:
        """Clients that prefer us now and did not before: the others must go behind us."""
        if not self._count or self._pool is None:
            return
        for group in self._pool.groups:
            for consumer in group.members:
                client_id = consumer.client_id
                if preferred(client_id, now) == self.me != preferred(client_id, before):
                    self._dirty = True
                    self._wake.set()
                    return

    # -- moves ---------------------------------------------------------------------------

    async def _rebalance(self) -> None:
        """Every BEAT s, send each group that should to the back of its lines, one at a time."""
        while not self._closing:
            await asyncio.sleep(BEAT)
            try:
                await self._rebalance_once()
            except Exception:
                log.exception("replicas.rebalance_failed")

    async def _rebalance_once(self) -> None:
        assert self._pool is not None
        if not self.announced():
            return  # alone, or no other replica has placed yet: no line to change
        for group in self._pool.groups:
            if self._closing:
                return
            placed = self.announced()
            live = frozenset(self.live())
            prefs = {self._preferred(m.client_id, live) for m in group.members}
            if not needs_cycle(self.me, prefs, group.stamp or {}, placed):
                continue
            if any(m.holds_park for m in group.members):
                continue  # a park never moves for balance; tried again when it is gone
            if self._again.get(group, 0.0) > time.monotonic():
                continue
            if not await self._pool.cycle(group, PATIENCE):
                self._again[group] = time.monotonic() + AGAIN_AFTER
