"""The park protocol under every interleaving Hypothesis finds: the real `Parking`, fake broker.

A Hypothesis state machine drives two replicas' `daemon.core.parking.Parking` for
one client queue of three items, with an in-memory double of the broker (a
single-active-consumer queue with prefetch 1) and of the state log (one
ordered list of records; each replica's view lags and catches up; appends
may be held in flight and land late). Every rule is an event the real world
can produce — a delivery, a handler finishing, a channel loss, a kill -9, a
late record, a retry or skip (stale, duplicated), a pause and resume — and
after every step the invariants of docs/parking.md are checked.

Asyncio is driven by hand: every await in the fakes waits on a future that
only a rule resolves, so after `_settle()` every task is parked on one of
them and the machine knows the whole state.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from aio_pika.exceptions import ChannelInvalidStateError
from hypothesis import HealthCheck, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pydantic import BaseModel

from daemon.core.items import BadItem, Parsed
from daemon.core.parking import OperationError, Parking, Phase, Work
from daemon.core.records import Marker, Parked, Paused, Record, Resumed, Unparked, digest_of
from daemon.core.view import View
from handlers.base import Handler, Item
from handlers.errors import PermanentError

ITEMS = 3
REPLICAS = 2
BY_RETRY: ContextVar[bool] = ContextVar("by_retry", default=False)


class Noop(BaseModel):
    n: int


HANDLER = Handler("test.item", Noop, lambda item, ctx: asyncio.sleep(0))  # never called


# -- the broker -------------------------------------------------------------------------


@dataclass
class Message:
    n: int  # the item's index: its place in the client's FIFO
    redelivered: bool = False


@dataclass
class FakeDelivery:
    """A delivery on one channel generation of one replica."""

    world: World
    replica: int
    generation: int
    msg: Message
    redelivered: bool
    content_type: str | None = "application/json"
    headers: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    type: str | None = "test.item"

    @property
    def message_id(self) -> str:
        return f"m{self.msg.n}"

    @property
    def body(self) -> bytes:
        return b'{"n": %d}' % self.msg.n

    async def ack(self) -> None:
        self.world.ack(self)


class World:
    """The queue, who consumes it, and the ground truth the invariants are checked against."""

    def __init__(self) -> None:
        self.queue: list[Message] = [Message(n) for n in range(ITEMS)]
        self.held: dict[int, FakeDelivery] = {}  # replica -> its unacked delivery
        self.generation = [0] * REPLICAS
        self.order = list(range(REPLICAS))  # single active consumer: the first one
        self.acked: list[int] = []
        self.archived: list[int] = []
        self.deadlettered: list[int] = []  # the broker's delivery limit took them
        self.released: list[int] = []  # dead-lettered items whose gone park was skipped
        self.succeeded: set[int] = set()  # handlers that returned (the ack may be lost)
        self.running: dict[int, int] = {}  # replica -> item whose handler runs now
        self.runs: list[tuple[int, int, bool]] = []  # (replica, item, by retry)

    @property
    def active(self) -> int:
        return self.order[0]

    def ack(self, delivery: FakeDelivery) -> None:
        if self.generation[delivery.replica] != delivery.generation:
            raise ChannelInvalidStateError("the channel is closed")
        assert self.held.get(delivery.replica) is delivery, "acked a delivery it does not hold"
        del self.held[delivery.replica]
        self.queue.remove(delivery.msg)
        self.acked.append(delivery.msg.n)

    def lose_channel(self, replica: int, *, dead_letter: bool = False) -> None:
        """The broker requeues the held delivery at the head and activates the next consumer.

        At the queue's delivery limit it dead-letters the delivery instead.
        """
        self.generation[replica] += 1
        delivery = self.held.pop(replica, None)
        if delivery is not None:
            delivery.msg.redelivered = True
            if dead_letter:
                self.queue.remove(delivery.msg)
                self.deadlettered.append(delivery.msg.n)
        self.order.remove(replica)
        self.order.append(replica)


# -- the state log ------------------------------------------------------------------------


class SharedLog:
    """The stream: records in order; appends may wait in flight (a late record)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.in_flight: list[tuple[Record, asyncio.Future[None], int]] = []
        self.hold_appends = False

    def fold(self, upto: int | None = None) -> View:
        view = View()
        for offset, record in enumerate(self.records[:upto]):
            view.apply(record, offset)
        return view


class ReplicaLog:
    """One replica's `Log`: its own lagging view of the shared stream."""

    def __init__(self, shared: SharedLog, replica: int, on_record: Any) -> None:
        self._shared = shared
        self.replica = replica
        self._view = View()
        self.applied = 0
        self._on_record = on_record
        self.dead = False

    @property
    def view(self) -> View:
        return self._view

    def catch_up(self, upto: int | None = None) -> None:
        end = len(self._shared.records) if upto is None else upto
        while self.applied < end:
            record = self._shared.records[self.applied]
            self._view.apply(record, self.applied)
            self.applied += 1
            self._on_record(record)

    async def append(self, record: Record, patience: float = 0.0) -> None:
        if self._shared.hold_appends:
            landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._shared.in_flight.append((record, landed, self.replica))
            await landed
        else:
            self._shared.records.append(record)

    async def sync(self, timeout: float = 0.0) -> None:
        """Read-your-writes: a marker is appended, and read back with all before it."""
        await self.append(Marker(id="sync"))
        self.catch_up()


# -- the machine -------------------------------------------------------------------------


class ParkingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = World()
        self.shared = SharedLog()
        self.logs: list[ReplicaLog] = []
        self.parkings: list[Parking] = []
        self.takes: dict[int, asyncio.Task[None]] = {}
        self.attempts: dict[int, asyncio.Future[bool]] = {}  # replica -> handler outcome
        self.calls: dict[int, list[asyncio.Task[Any]]] = {r: [] for r in range(REPLICAS)}
        self.outcomes: list[Any] = []
        self.crashes = 0
        self.losses = 0
        self.violations: list[str] = []  # found inside tasks, where an assert would be swallowed

    @initialize()
    def start(self) -> None:
        for replica in range(REPLICAS):
            self._boot(replica)
        self._settle()

    def _boot(self, replica: int) -> None:
        log = ReplicaLog(self.shared, replica, lambda r, i=replica: self._heard(i, r))
        parking = Parking("acme", log, self._work(replica), Report(self.world))
        log.catch_up()
        if replica < len(self.logs):
            self.logs[replica].dead = True
            self.logs[replica], self.parkings[replica] = log, parking
        else:
            self.logs.append(log)
            self.parkings.append(parking)

    def _heard(self, replica: int, record: Record) -> None:
        if isinstance(record, Resumed) and not self.logs[replica].dead:
            self.parkings[replica].on_resumed()

    def _work(self, replica: int) -> Work:
        world = self.world

        def parse(delivery: Any) -> Parsed | BadItem:
            item = Item(delivery.message_id, "test.item", "acme", Noop(n=delivery.msg.n),
                        "blocking")
            return Parsed(item, HANDLER)

        async def attempt(parsed: Parsed, n: int) -> None:
            item = parsed.item.payload.n
            by_retry = BY_RETRY.get()
            self._check_run_may_start(replica, item, by_retry)
            world.running[replica] = item
            world.runs.append((replica, item, by_retry))
            outcome: asyncio.Future[bool] = self.loop.create_future()
            self.attempts[replica] = outcome
            try:
                ok = await outcome
            finally:
                world.running.pop(replica, None)
                self.attempts.pop(replica, None)
            if not ok:
                raise PermanentError("HTTP 422")
            world.succeeded.add(item)

        async def archive(delivery: Any, park: Parked, actor: str, reason: str | None) -> None:
            # Invariant 3: a skip archives only the item this replica holds, parked.
            self._expect(world.held.get(replica) is delivery, "skip archived an item not held")
            self._expect(replica not in world.running, "skip archived an item while it runs")
            world.archived.append(delivery.msg.n)

        return Work(parse=parse, attempt=attempt, attempts=1, backoff=lambda n: 0.0,
                    archive=archive, gone_error=lambda message_id, error: "gone")

    def _expect(self, condition: bool, violation: str) -> None:
        if not condition:
            self.violations.append(violation)

    def _skipped_in_log(self) -> set[int]:
        """Items whose skip took effect in the log (its caller may have been cut off after)."""
        view, skipped = View(), set()
        for offset, record in enumerate(self.shared.records):
            view.apply(record, offset)
            if isinstance(record, Unparked) and record.how == "skip" and view.done.get(
                    "acme") == (record.message_id, record.digest):
                skipped.add(int(str(record.message_id)[1:]))
        return skipped

    def _check_run_may_start(self, replica: int, item: int, by_retry: bool) -> None:
        world, expect = self.world, self._expect
        # Invariant 5: two replicas never run one client's head at once.
        expect(not world.running, f"{item} starts on {replica} while {world.running} runs")
        # Invariant 1: an item that succeeded and was acked never runs again.
        expect(item not in world.acked, f"acked item {item} runs again")
        # Invariant 2: order — every earlier item succeeded or was skipped.
        done = {*world.acked, *world.released, *world.succeeded, *self._skipped_in_log()}
        expect(all(n in done for n in range(item)),
               f"{item} runs before an earlier one succeeded or was skipped")
        # Invariant 2: a parked item runs again only by retry.
        park = self.shared.fold().parked.get("acme")
        if park is not None and park.message_id == f"m{item}" and not park.gone:
            expect(by_retry, f"parked item {item} ran again without a retry")

    # -- driving asyncio ----------------------------------------------------------------

    def _settle(self) -> None:
        for _ in range(30):
            self.loop.run_until_complete(asyncio.sleep(0))
        self._deliver()
        for _ in range(30):
            self.loop.run_until_complete(asyncio.sleep(0))

    def _inside(self, call: Any) -> None:
        """Call a synchronous callback the way the loop calls it: from inside the loop."""
        async def now() -> None:
            call()

        self.loop.run_until_complete(now())

    def _deliver(self) -> None:
        """The broker hands the head to the active consumer if it holds nothing (prefetch 1)."""
        world = self.world
        replica = world.active
        if replica in world.held or not world.queue:
            return
        msg = world.queue[0]
        delivery = FakeDelivery(world, replica, world.generation[replica], msg, msg.redelivered)
        world.held[replica] = delivery
        self.takes[replica] = self.loop.create_task(self.parkings[replica].take(delivery))

    def teardown(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    # -- events -------------------------------------------------------------------------

    @precondition(lambda self: bool(self.attempts))
    @rule(data=st.data(), ok=st.booleans())
    def handler_finishes(self, data: st.DataObject, ok: bool) -> None:
        self.finish(data.draw(st.sampled_from(sorted(self.attempts))), ok)

    def finish(self, replica: int, ok: bool) -> None:
        """The handler call running on `replica` returns (ok) or fails permanently."""
        self.attempts[replica].set_result(ok)
        self._settle()

    @rule(replica=st.integers(0, REPLICAS - 1))
    def a_view_reads_one_record(self, replica: int) -> None:
        log = self.logs[replica]
        if log.applied < len(self.shared.records):
            self._inside(lambda: log.catch_up(log.applied + 1))
        self._settle()

    @precondition(lambda self: bool(self.shared.in_flight))
    @rule(data=st.data())
    def a_late_record_lands(self, data: st.DataObject) -> None:
        self.land(data.draw(st.integers(0, len(self.shared.in_flight) - 1)))

    def land(self, index: int) -> None:
        """The broker takes the in-flight record at `index` into the stream."""
        record, landed, _ = self.shared.in_flight.pop(index)
        self.shared.records.append(record)
        if not landed.done():
            landed.set_result(None)
        self._settle()

    @rule(hold=st.booleans())
    def appends_are_slow(self, hold: bool) -> None:
        self.shared.hold_appends = hold
        if not hold:
            while self.shared.in_flight:
                self.a_late_record_lands_first()
        self._settle()

    def a_late_record_lands_first(self) -> None:
        record, landed, _ = self.shared.in_flight.pop(0)
        self.shared.records.append(record)
        if not landed.done():
            landed.set_result(None)

    @precondition(lambda self: self.losses < 4)
    @rule(replica=st.integers(0, REPLICAS - 1), at_limit=st.booleans())
    def channel_lost(self, replica: int, at_limit: bool) -> None:
        """consumer_timeout, a channel error: the held item goes back; aiormq cancels the run.

        `at_limit`: the item had reached the queue's delivery limit, so the broker
        dead-letters it instead (once per run of the machine).
        """
        self.losses += 1
        held = self.world.held.get(replica)
        # The limit counts returns (1,000 by default): an item reaches it only after
        # many redeliveries, and the claim of at least one of them is in the log.
        # (docs/parking.md states this assumption.)
        claimed = held is not None and self.shared.fold().claims.get("acme") == (
            held.message_id, digest_of(held.body))
        limit = at_limit and claimed and not self.world.deadlettered
        self.world.lose_channel(replica, dead_letter=limit)
        task = self.takes.pop(replica, None)
        if task is not None:
            task.cancel()
        self._inside(self.parkings[replica].channel_lost)
        self._settle()

    @precondition(lambda self: self.losses < 4)
    @rule(replica=st.integers(0, REPLICAS - 1))
    def hand_over_begins(self, replica: int) -> None:
        """daemon.broker.replicas moves the client's line: new deliveries wait unrun (`hold`)."""
        self._inside(self.parkings[replica].hold)
        self._settle()

    @precondition(lambda self: any(p.holding for p in self.parkings))
    @rule(data=st.data())
    def hand_over_ends(self, data: st.DataObject) -> None:
        """The pool's cycle: close the channel if the consumer is idle and holds no park,
        else give up; either way the hold ends (daemon.broker.channels.ConsumerChannels.cycle)."""
        self.end_hand_over(data.draw(st.sampled_from(
            [r for r, p in enumerate(self.parkings) if p.holding])))

    def end_hand_over(self, replica: int) -> None:
        parking = self.parkings[replica]
        if not parking.busy and not parking.holds_park:
            self.losses += 1
            self.world.lose_channel(replica)
            task = self.takes.pop(replica, None)
            if task is not None:
                task.cancel()
            self._inside(parking.channel_lost)
        self._inside(parking.unhold)
        self._settle()

    @precondition(lambda self: self.crashes < 2)
    @rule(replica=st.integers(0, REPLICAS - 1))
    def kill_9(self, replica: int) -> None:
        """The process dies: its tasks stop; records it sent may still land; it starts again."""
        self.crashes += 1
        self.world.lose_channel(replica)
        for task in [self.takes.pop(replica, None), *self.calls[replica]]:
            if task is not None and not task.done():
                task.cancel()
        old = self.parkings[replica]
        self._inside(old.channel_lost)
        for replica_task in list(old._runs):
            replica_task.cancel()
        self.attempts.pop(replica, None)
        self._settle()
        self._boot(replica)
        self._settle()

    @rule(replica=st.integers(0, REPLICAS - 1), stale=st.booleans(),
          how=st.sampled_from(["retry", "skip"]), twice=st.booleans())
    def admin_acts(self, replica: int, stale: bool, how: str, twice: bool) -> None:
        """Retry or skip on a replica, naming the parked item or a stale one; maybe twice."""
        parking = self.parkings[replica]
        park = parking.parked
        message_id = "m9" if stale or park is None else park.message_id
        for _ in range(2 if twice else 1):
            task = self.loop.create_task(self._answer(parking, how, message_id))
            self.calls[replica].append(task)
        self._settle()

    async def _answer(self, parking: Parking, how: str, message_id: str | None) -> None:
        BY_RETRY.set(how == "retry")  # tasks the retry starts inherit it
        try:
            self.outcomes.append(await getattr(parking, how)(message_id, "alice", None))
        except OperationError as exc:
            self.outcomes.append(str(exc))

    @rule(pause=st.booleans(), replica=st.integers(0, REPLICAS - 1))
    def pause_or_resume(self, pause: bool, replica: int) -> None:
        record: Record = Paused(client_id="acme") if pause else Resumed(client_id="acme")
        self.shared.records.append(record)
        self._inside(self.logs[replica].catch_up)
        self._settle()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def no_violation_inside_a_task(self) -> None:
        assert self.violations == []

    @invariant()
    def a_park_survives(self) -> None:
        """Invariant 4: while the log says parked on an item, that item is still in the queue."""
        park = self.shared.fold().parked.get("acme")
        if park is None or park.gone:
            return
        n = int(str(park.message_id)[1:])
        assert n not in self.world.acked, f"parked item {n} was acked without retry or skip"
        in_queue = [m.n for m in self.world.queue]
        assert n in in_queue or n in self.world.deadlettered, f"parked item {n} was lost"

    @invariant()
    def nothing_is_lost_or_done_twice(self) -> None:
        world = self.world
        assert len(world.acked) == len(set(world.acked)), "an item was acked twice"
        assert sorted(world.acked + world.deadlettered + [m.n for m in world.queue]) == list(
            range(ITEMS))
        assert world.acked == sorted(world.acked), "items finished out of order"

    @invariant()
    def parked_here_means_held_here(self) -> None:
        """A replica that says it holds a park holds that very delivery, unacked."""
        for replica, parking in enumerate(self.parkings):
            park = parking.parked
            if park is not None and parking.phase is Phase.PARKED:
                delivery = self.world.held.get(replica)
                assert delivery is not None, f"replica {replica} says parked, holds nothing"
                if not park.gone:
                    assert delivery.message_id == park.message_id
                    assert digest_of(delivery.body) == park.digest or not park.digest

    @invariant()
    def a_held_delivery_always_has_an_owner(self) -> None:
        """Every delivery ends in a fate: a held one is running, parked or paused, never idle."""
        for replica, delivery in self.world.held.items():
            if delivery.generation != self.world.generation[replica]:
                continue
            parking = self.parkings[replica]
            # A hold owns what arrives meanwhile: it runs at unhold or goes back with the channel.
            owned = parking.busy or parking.holding or parking.phase in (Phase.PARKED,
                                                                         Phase.PAUSED)
            assert owned, (
                f"replica {replica} holds {delivery.message_id} with no owner ({parking!r})")

    @invariant()
    def views_are_folds_of_what_they_read(self) -> None:
        """Invariant 7: each replica's view is the fold of the records it has read."""
        for log in self.logs:
            assert log.view == self.shared.fold(log.applied)


def event(what: str) -> None:
    """Count an outcome as a Hypothesis event; the step-by-step scenarios run outside one."""
    with contextlib.suppress(InvalidArgument):
        hypothesis_event(what)


class Report:
    """Outcomes, counted as Hypothesis events (`--hypothesis-show-statistics` shows the mix)."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def succeeded(self, *args: Any) -> None:
        event("an item succeeded")

    async def attempt_failed(self, *args: Any) -> None: ...

    def parked(self, park: Parked, *, repeated: bool) -> None:
        event("parked, item gone" if park.gone else "repeated park" if repeated else "parked")

    def still_parked(self, park: Parked) -> None:
        event("a redelivered park held again")

    async def announce(self, park: Parked) -> bool:
        return True

    async def resumed(self, scope: str, park: Parked | None, how: str, actor: str) -> None:
        event(f"resumed by {how}" + (" of a gone item" if park and park.gone else ""))
        if park is not None and park.gone:
            self.world.released.append(int(str(park.message_id)[1:]))

    async def skipped(self, *args: Any) -> None: ...


ParkingMachine.TestCase.settings = settings(
    max_examples=int(__import__("os").environ.get("S2SQ_MODEL_EXAMPLES", "300")),
    stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_the_park_protocol_holds_under_faults = pytest.mark.timeout(600)(ParkingMachine.TestCase)
