"""One client's head item: run it, park it, hold it, retry it, skip it (docs/parking.md).

`Parking` holds the delivery at the head of one scope's queue (today a
client) and decides its fate; every delivery ends in exactly one of: ack
after success, park (held), archive then ack (skip), ack unrun (done
before), or handed back (its channel closed). The phase says who owns the
held delivery at any moment, and it changes without an `await` between the
check and the change, so two callers can never both start the same item.

Runs are tasks this module can name: a delivery's own callback task
(aiormq cancels it when its channel closes) or a task it starts itself for
a retry, a skip or a resumed run (cancelled in `channel_lost`). A run that
is cancelled writes nothing more; a record already on its way carries the
epoch it was written under, and the fold ignores it if someone else has
received the item since (docs/parking.md, "Fences").

Collaborators come in as narrow protocols, so the Hypothesis state machine
(tests/daemon/test_parking_model.py) drives this very code with an
in-memory log and channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, reset_contextvars

from common.clock import utcnow
from daemon.core.items import BadItem, Parsed
from daemon.core.records import (
    Announced,
    Claimed,
    Parked,
    Record,
    Scope,
    Unparked,
    digest_of,
    display_payload,
    short_error,
)
from daemon.core.view import View, same_item
from daemon.tasks import Tasks
from handlers.errors import HandlerError, TransientError

log = structlog.get_logger()


class OperationError(Exception):
    """Raised when an admin action cannot be carried out; the message says why."""


class UnknownClient(OperationError):
    """Raised when an action names a client that is not registered."""


class Phase(enum.Enum):
    IDLE = "idle"  # nothing held, or a delivery being placed
    RUNNING = "running"  # a run, a retry or a skip owns the held item
    PARKED = "parked"  # held after a failure, until retry or skip
    PAUSED = "paused"  # held unrun until resume


class Delivery(Protocol):
    """A delivery at the head of a queue, and how to settle it on its channel."""

    @property
    def message_id(self) -> str | None: ...
    @property
    def type(self) -> str | None: ...
    @property
    def body(self) -> bytes: ...
    @property
    def redelivered(self) -> bool: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def headers(self) -> dict[str, Any]: ...
    @property
    def timestamp(self) -> datetime | None: ...
    async def ack(self) -> None: ...


class Log(Protocol):
    """What parking needs of the state log."""

    @property
    def view(self) -> View: ...
    async def append(self, record: Record, patience: float = ...) -> None: ...
    async def sync(self, timeout: float = ...) -> None: ...


class Report(Protocol):
    """Where outcomes are said (daemon.core.outcomes.Outcomes)."""

    async def succeeded(self, parsed: Parsed, attempts: int, started: float) -> None: ...
    async def attempt_failed(self, parsed: Parsed, attempt: int, error: str) -> None: ...
    def parked(self, park: Parked, *, repeated: bool) -> None: ...
    def still_parked(self, park: Parked) -> None: ...
    async def announce(self, park: Parked) -> bool: ...
    async def resumed(self, scope: Scope, park: Parked | None, how: str, actor: str) -> None: ...
    async def skipped(self, client_id: str, message_id: str | None, type_: str | None,
                      queue: str, actor: str, reason: str | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Work:
    """How an item is run: parse it, try it, wait between attempts."""

    parse: Callable[[Delivery], Parsed | BadItem]
    attempt: Callable[[Parsed, int], Awaitable[None]]  # raises HandlerError
    attempts: int
    backoff: Callable[[int], float]
    archive: Callable[[Delivery, Parked, str, str | None], Awaitable[None]]
    gone_error: Callable[[str | None, str], str]  # (message id, its last error) -> why


class Parking:
    """The park protocol for one scope's head item (one client's blocking queue)."""

    def __init__(self, scope: Scope, log_: Log, work: Work, report: Report) -> None:
        self.scope = scope
        self._log = log_
        self._work = work
        self._report = report
        self._head: Delivery | None = None
        self._phase = Phase.IDLE
        self._park: Parked | None = None  # the park this holder holds (or is retrying)
        self._runs: set[asyncio.Task[Any]] = set()  # at most one, but a handover overlaps
        self._reporting: asyncio.Task[Any] | None = None  # the last action's side effects
        self._tasks = Tasks(client_id=scope)  # the tasks started here: a crash is logged
        self._done_unacked: tuple[str | None, str] | None = None
        self._epoch: int | None = None  # the epoch of our claim of the held redelivery
        # True until the first delivery on a newly placed consumer: before it, another
        # replica may have been the active consumer (and claimed or parked something).
        self._fresh = True
        self._stopping = False
        # A hand-over (daemon.broker.replicas): new deliveries wait, unrun, until it ends.
        self._unheld = asyncio.Event()
        self._unheld.set()
        self._placement = 0  # counts channel losses: a delivery waiting on a hold checks it
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"<Parking {self.scope} {self._phase.value} {self._head!r}>"

    # -- what others may ask ----------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def parked(self) -> Parked | None:
        """The park of the item held here, if this replica holds one."""
        return self._park if self._phase is Phase.PARKED and self._head is not None else None

    @property
    def holds_park(self) -> bool:
        """True while this replica holds the parked item (parked, or being retried or skipped)."""
        return self._park is not None and self._head is not None

    @property
    def busy(self) -> bool:
        """True while a run (an item, a retry, a skip) is in progress."""
        return not self._idle.is_set()

    @property
    def paused(self) -> bool:
        return self.scope in self._log.view.paused

    @property
    def state(self) -> str:
        """`parked`, `paused` or `running` (SPEC section 8), as this replica sees it."""
        if self.parked is not None:
            return "parked"
        return "paused" if self.paused else "running"

    # -- lifecycle --------------------------------------------------------------------

    def begin_stop(self) -> None:
        """Start nothing new; what is held is handed back when the channel closes."""
        self._stopping = True

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def hold(self) -> None:
        """Start nothing new until `unhold` (or the channel closes): for a hand-over.

        A delivery that arrives meanwhile waits unrun in its callback; closing
        the channel hands it back to the head of the queue (redelivered, in
        order), `unhold` lets it run here. A run already going on goes on:
        `wait_idle` says when it is over.
        """
        self._unheld.clear()

    def unhold(self) -> None:
        """End a hold: waiting deliveries go on, and an item held by it runs."""
        if self._unheld.is_set():
            return
        self._unheld.set()
        self.on_resumed()

    @property
    def holding(self) -> bool:
        return not self._unheld.is_set()

    def cancel_running(self) -> None:
        """Interrupt a run (shutdown timeout); the item is redelivered later."""
        for task in self._runs:
            task.cancel()

    def channel_lost(self) -> None:
        """The channel closed: its delivery tags are void and the broker requeued the head.

        A run on the lost delivery is cancelled (aiormq cancels the callback
        tasks of a closed channel; the tasks started here are cancelled now),
        and the redelivery waits until it has unwound (`take`).
        """
        self._head = None
        self._park = None
        self._epoch = None
        self._fresh = True
        self._placement += 1
        self._phase = Phase.IDLE
        for task in self._runs:
            if task is not asyncio.current_task():
                task.cancel()

    # -- a delivery ----------------------------------------------------------------------

    def _about(self, delivery: Delivery) -> contextlib.AbstractContextManager[None]:
        """The delivery's fields on every log line while it is handled (daemon/logs.py)."""
        return bound_contextvars(client_id=self.scope, message_id=delivery.message_id,
                                 type=delivery.type)

    async def take(self, delivery: Delivery) -> None:
        """Decide the fate of a delivery at the head (runs in its callback task)."""
        # bound_contextvars without its generator: a third of the cost on the hot path
        tokens = bind_contextvars(client_id=self.scope, message_id=delivery.message_id,
                                  type=delivery.type)
        try:
            await self._take(delivery)
        finally:
            reset_contextvars(**tokens)

    async def _take(self, delivery: Delivery) -> None:
        placement = self._placement
        while self.holding or self.busy:
            if self.holding:  # a hand-over: wait, unrun; if the channel closes, it goes back
                await self._unheld.wait()
            else:
                # The run on a channel since closed is still unwinding: never two at once.
                log.info("item.waiting_for_previous_run")
                await self._idle.wait()
            if placement != self._placement:
                return  # its channel closed meanwhile: the tag is void, the broker has it
        if self._stopping:
            return  # never started: handed back when the channel closes
        self._head = delivery
        self._phase = Phase.RUNNING
        await self._guarded(self._place_and_run(delivery), raise_=False)

    async def _place_and_run(self, delivery: Delivery) -> None:
        if await self._place(delivery):
            await self._run_item(delivery)

    async def _place(self, delivery: Delivery) -> bool:
        """Claim a redelivered item and see what the log says of it; True to run it now."""
        view = self._log.view
        if delivery.redelivered:
            view = await self._claim(delivery)
            if self._already_done(delivery, view):
                log.info("item.already_done")
                if view.open_claim(self.scope) is not None:  # ours: close it before the ack
                    await self._close_claim(delivery)
                with contextlib.suppress(Exception):  # a lost channel: redelivered, acked then
                    await delivery.ack()
                self._release(delivery)
                return False
        elif self._fresh or self.scope in view.parked or view.open_claim(self.scope):
            # A first delivery on a new consumer, or while the log names another item:
            # read the log up to now (while a consumer stays active nobody else delivers).
            await self._log.sync()
            view = self._log.view
        self._fresh = False
        park = view.parked.get(self.scope)
        if park is not None:
            await self._hold_park(delivery, park)
            return False
        claim = view.open_claim(self.scope)
        if claim is not None and not self._is(delivery, claim):
            await self._hold_lost(delivery, claim)
            return False
        if self.scope in view.paused:
            self._phase = Phase.PAUSED
            log.info("item.held", reason="paused")
            return False
        return True

    async def _claim(self, delivery: Delivery) -> View:
        """Write a claim of the redelivered item that wins, and read the log up to it.

        A claim names the epoch its writer read; if another claim came first (it
        cannot be a late one: those name an older epoch and change nothing), read
        on and claim again.
        """
        for attempt in itertools.count():
            if attempt:
                await self._log.sync()
            claim = uuid.uuid4().hex
            await self._log.append(Claimed(
                client_id=self.scope, message_id=delivery.message_id,
                digest=digest_of(delivery.body), seen=self._log.view.epoch(self.scope),
                claim=claim))
            await self._log.sync()
            view = self._log.view
            if view.claim_ids.get(self.scope) == claim:
                self._epoch = view.epoch(self.scope)
                return view
            log.info("item.claim_again")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _close_claim(self, delivery: Delivery) -> None:
        """A claimed item is done: say so before the ack, or the next item would find the
        claim open and take the item for one that left the queue unfinished."""
        await self._log.append(Unparked(
            client_id=self.scope, message_id=delivery.message_id,
            digest=digest_of(delivery.body), epoch=self._epoch, how="done"))

    def _already_done(self, delivery: Delivery, view: View) -> bool:
        """Its release was recorded (or, the log parking it nowhere, it succeeded here)."""
        done = view.done.get(self.scope)
        if done is not None and self._is(delivery, done):
            return True
        mine, self._done_unacked = self._done_unacked, None
        if mine is None or not self._is(delivery, mine):
            return False
        # Our run succeeded but its ack was lost. Trust that only while the log parks
        # no item: someone else may have run it again since and parked it.
        return self.scope not in view.parked

    async def _hold_park(self, delivery: Delivery, park: Parked) -> None:
        """Hold the parked item again unrun; or, if it left the queue, keep the client parked."""
        if same_item(park, delivery.message_id, digest_of(delivery.body)):
            if park.gone:  # it came back to the head (put back by hand): held as it was
                park = await self._record_park(replace(park, gone=False))
            self._park = park
            self._phase = Phase.PARKED
            self._report.still_parked(park)
            if not park.announced:
                await self._announce(park)
            return
        if not park.gone or not park.failed_at:
            # The broker dead-lettered it at the delivery limit, or the queue was purged:
            # nothing of this client runs until someone skips it (SPEC §4: never by accident).
            now = utcnow()  # a new park: announced and mailed as one
            park = await self._record_park(replace(
                park, gone=True, since=now, failed_at=now,
                error=short_error(self._work.gone_error(park.message_id, park.error))))
            self._report.parked(park, repeated=True)
        self._park = park
        self._phase = Phase.PARKED
        if not park.announced:
            await self._announce(park)

    async def _hold_lost(self, delivery: Delivery, claim: tuple[str | None, str]) -> None:
        """The last redelivered item never finished and is gone: park on it, hold this one.

        An item that crashed its consumer over and over reaches the queue's
        delivery limit and is dead-lettered without ever being parked; the next
        item must still not run before someone decides (SPEC §4, point 1).
        """
        message_id, digest = claim
        now = utcnow()
        park = await self._record_park(Parked(
            client_id=self.scope, message_id=message_id, digest=digest, gone=True,
            error=short_error(self._work.gone_error(message_id, "")), since=now, failed_at=now))
        self._park = park
        self._phase = Phase.PARKED
        self._report.parked(park, repeated=False)
        await self._announce(park)

    async def _run_item(self, delivery: Delivery) -> None:
        work = self._work
        parsed = work.parse(delivery)
        if isinstance(parsed, BadItem):
            await self._park_failed(delivery, parsed.message_id, parsed.type, parsed.error,
                                    attempts=0, payload=display_payload(delivery.body))
            return
        started = time.monotonic()
        for attempt in range(1, work.attempts + 1):
            try:
                await work.attempt(parsed, attempt)
            except HandlerError as exc:
                if attempt == work.attempts or not isinstance(exc, TransientError):
                    await self._park_failed(delivery, parsed.item.message_id, parsed.item.type,
                                            str(exc), attempts=attempt,
                                            payload=display_payload(delivery.body))
                    return
                await self._report.attempt_failed(parsed, attempt, str(exc))
                await asyncio.sleep(work.backoff(attempt))
            else:
                if delivery.redelivered:  # close our claim before the ack (docs/parking.md)
                    await self._close_claim(delivery)
                await self._settle(delivery)
                await self._report.succeeded(parsed, attempt, started)
                return

    # -- parks ------------------------------------------------------------------------------

    async def _park_failed(self, delivery: Delivery, message_id: str | None, type_: str | None,
                           error: str, *, attempts: int, payload: Any,
                           since: str | None = None, held: Parked | None = None) -> Parked:
        """Record the park (fenced), then announce it: one event and notification per park.

        A retry that fails (`held`: the park it retried) parks again under the
        epoch it holds the park under, as its unpark would, and announces after
        the admin has the answer.
        """
        now = utcnow()
        park = await self._record_park(Parked(
            client_id=self.scope, message_id=message_id, digest=digest_of(delivery.body),
            type=type_, error=short_error(error), attempts=attempts, since=since or now,
            failed_at=now, payload=payload,
        ), epoch=held.epoch if held is not None else None)
        self._park = park
        self._phase = Phase.PARKED
        self._report.parked(park, repeated=since is not None)
        if held is not None:
            self.report_after(lambda: self._announce(park))
        else:
            await self._announce(park)
        return park

    async def _record_park(self, park: Parked, epoch: int | None = None) -> Parked:
        """Append the park under the current epoch; keep trying while the item is held.

        The current epoch is read after a sync, unless the caller holds the park
        it parks again (`epoch`): a claim since means someone else has the item,
        and the fold must ignore this record (docs/parking.md, "Fences").

        Until the record is written the item is not parked: if this replica dies
        (or loses the channel) first, the redelivery runs the item again, as any
        interrupted run (at-least-once).
        """
        while True:
            try:
                if epoch is None:
                    await self._log.sync()
                park = replace(park, announced=False, epoch=(
                    self._log.view.epoch(self.scope) if epoch is None else epoch))
                await self._log.append(park)
                return park
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away for longer than append's patience
                log.error("state.park_not_recorded", client_id=self.scope,
                          message_id=park.message_id, error=repr(exc))
                await asyncio.sleep(1.0)

    async def _announce(self, park: Parked) -> None:
        """Publish the park's events and queue its notification, then record that it was.

        A holder that dies in between leaves the park unannounced; whoever holds
        the item next announces it (the outbox sends each notification once).
        """
        if not await self._report.announce(park):
            return
        try:
            await self._log.append(Announced(client_id=self.scope, message_id=park.message_id,
                                             failed_at=park.failed_at), patience=10)
        except Exception as exc:
            log.warning("park.announce_not_recorded", client_id=self.scope,
                        message_id=park.message_id, type=park.type, error=repr(exc))
            return
        log.info("park.announced", client_id=self.scope, message_id=park.message_id,
                 type=park.type)

    # -- admin actions ------------------------------------------------------------------

    def _check(self, message_id: str | None) -> tuple[Delivery, Parked]:
        """The held delivery and its park, if this replica holds the named parked item."""
        park, head = self._park, self._head
        if self.holding:
            raise OperationError(f"client {self.scope!r} is being handed to another replica"
                                 " right now; try again in a few seconds")
        if self._phase is Phase.RUNNING and park is not None:
            raise OperationError(f"the parked item {park.message_id!r} of client "
                                 f"{self.scope!r} is being retried or skipped right now")
        if self._phase is not Phase.PARKED or park is None or head is None:
            raise OperationError(f"client {self.scope!r} is not parked")
        if message_id is not None and message_id != park.message_id:
            raise OperationError(
                f"message {message_id!r} is not the parked item of client {self.scope!r}"
                f" (the parked item is {park.message_id!r})")
        return head, park

    async def retry(self, message_id: str | None, actor: str,
                    reason: str | None) -> dict[str, Any]:
        """Run the parked item once now; resume on success, stay parked on failure."""
        delivery, park = self._check(message_id)
        if park.gone:
            raise OperationError(
                f"the parked item {park.message_id!r} of client {self.scope!r} is no longer"
                " in its queue, so it cannot run; skip it to let the client go on")
        self._phase = Phase.RUNNING
        log.info("item.retry", client_id=self.scope, message_id=park.message_id, actor=actor,
                 reason=reason)
        return await self._own(self._retry(delivery, park, actor, reason), "retry")

    async def _retry(self, delivery: Delivery, park: Parked, actor: str,
                     reason: str | None) -> dict[str, Any]:
        parsed = self._work.parse(delivery)
        attempts = park.attempts + 1
        started = time.monotonic()
        try:
            if isinstance(parsed, BadItem):
                raise OperationError(parsed.error)
            await self._work.attempt(parsed, attempts)
        except (HandlerError, OperationError) as exc:
            await self._park_failed(delivery, park.message_id, park.type, str(exc),
                                    attempts=attempts, payload=park.payload, since=park.since,
                                    held=park)
            return {"outcome": "failed", "error": short_error(str(exc)),
                    "message_id": park.message_id}
        await self._unpark(delivery, park, "retry", actor, reason)
        self.report_after(lambda: self._settle(delivery),
                          lambda: self._report.succeeded(parsed, attempts, started),
                          lambda: self._report.resumed(self.scope, park, "retry", actor))
        return {"outcome": "succeeded", "message_id": park.message_id}

    async def skip(self, message_id: str | None, actor: str,
                   reason: str | None) -> dict[str, Any]:
        """Archive the parked item with who skipped it and why, then resume."""
        delivery, park = self._check(message_id)
        self._phase = Phase.RUNNING
        return await self._own(self._skip(delivery, park, actor, reason), "skip")

    async def _skip(self, delivery: Delivery, park: Parked, actor: str,
                    reason: str | None) -> dict[str, Any]:
        if not park.gone:
            await self._work.archive(delivery, park, actor, reason)
        await self._unpark(delivery, park, "skip", actor, reason)

        async def go_on() -> None:
            if park.gone:  # the held delivery is the next item: it runs now (unless paused)
                self._start_held(delivery)
            else:
                await self._settle(delivery)

        self.report_after(lambda: self._report.skipped(self.scope, park.message_id, park.type,
                                                       "blocking", actor, reason),
                          lambda: self._report.resumed(self.scope, park, "skip", actor),
                          go_on)
        return {"message_id": park.message_id}

    async def _unpark(self, delivery: Delivery, park: Parked, how: str, actor: str,
                      reason: str | None) -> None:
        """Record the release before the ack: a redelivery after a lost ack is acked unrun."""
        await self._log.append(Unparked(client_id=self.scope, message_id=park.message_id,
                                        digest=park.digest, epoch=park.epoch, how=how,
                                        actor=actor, reason=reason))
        self._park = None

    def on_resumed(self) -> None:
        """A resume record arrived: run the item held while paused, if any."""
        if self._phase is Phase.PAUSED and self._head is not None and not self.paused:
            self._start_held(self._head)

    # -- bookkeeping -------------------------------------------------------------------------

    async def _own(self, work: Awaitable[dict[str, Any]], what: str) -> dict[str, Any]:
        """Run an admin action in a task of ours: a lost channel cancels it, not the caller."""
        task: asyncio.Task[dict[str, Any]] = self._tasks.spawn(self._guarded(work, raise_=True))
        await asyncio.wait({task})
        if task.cancelled():
            raise OperationError(
                f"the {what} of client {self.scope!r} was interrupted: the daemon lost its"
                " channel to the broker, and whether it took effect is in the client's"
                " state (the item is held again, parked, if it did not)")
        return task.result()

    def report_after(self, *steps: Callable[[], Awaitable[None]]) -> None:
        """Report an admin action's outcome (ack, events, notifications) after its answer.

        The records that decide the outcome are written before the answer; the
        steps follow in a task of this scope (busy until done, so a shutdown
        waits for them; cancelled with the channel, like a run), after the
        previous action's steps, so events keep their order. A step that fails
        is logged and the next one still runs (issue 17: each of these is a
        broker round trip the admin no longer waits for).
        """
        previous = self._reporting

        async def in_turn() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            for step in steps:
                try:
                    await step()
                except Exception:
                    log.exception("parking.report_failed", client_id=self.scope)

        task = self._tasks.spawn(in_turn())
        self._runs.add(task)  # busy from now, not from its first step
        self._idle.clear()
        task.add_done_callback(self._run_ended)
        self._reporting = task

    def _run_ended(self, task: asyncio.Task[Any]) -> None:
        self._runs.discard(task)
        if not self._runs:
            self._idle.set()

    def _start_held(self, delivery: Delivery) -> None:
        """Run the held item in a task of ours (after a resume, or a skip of a gone park)."""
        if self.holding:  # a hand-over: runs at `unhold`, or goes back with the channel
            self._phase = Phase.PAUSED
            return
        if self._stopping or self.paused:
            self._phase = Phase.PAUSED if self.paused else Phase.IDLE
            return
        self._phase = Phase.RUNNING
        with self._about(delivery):  # the task's context is a copy of this one
            self._tasks.spawn(self._guarded(self._run_item(delivery), raise_=False))

    async def _guarded(self, work: Awaitable[Any], *, raise_: bool) -> Any:
        """Run `work` as a run of this scope: busy meanwhile; a crash never leaves the item unowned.

        An exception from our own code (or from a broker that stayed away past
        every patience) while the item runs parks it with the error, so it is
        held, visible and retryable; an admin action that fails leaves the park
        as it was.
        """
        task = asyncio.current_task()
        assert task is not None
        self._runs.add(task)
        self._idle.clear()
        try:
            return await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("item.crashed", client_id=self.scope,
                          message_id=self._head.message_id if self._head else None)
            await self._after_crash(exc)
            if raise_:
                raise
            return None
        finally:
            self._runs.discard(task)
            if self._phase is Phase.RUNNING and self._head is None:
                self._phase = Phase.IDLE
            if not self._runs:
                self._idle.set()

    async def _after_crash(self, exc: Exception) -> None:
        head = self._head
        if head is None or self._phase is not Phase.RUNNING:
            return
        if self._park is not None:  # an admin action failed before it changed anything
            self._phase = Phase.PARKED
            return
        await self._park_failed(head, head.message_id, head.type,
                                f"internal error in s2s-queue: {type(exc).__name__}: {exc}",
                                attempts=0, payload=display_payload(head.body))

    async def _settle(self, delivery: Delivery) -> None:
        """Ack the finished item; if the channel went meanwhile, remember it as done."""
        try:
            await delivery.ack()
        except Exception:
            self._done_unacked = (delivery.message_id, digest_of(delivery.body))
            log.warning("item.ack_lost", client_id=self.scope, message_id=delivery.message_id,
                        type=delivery.type)
        self._release(delivery)

    def _release(self, delivery: Delivery) -> None:
        if self._head is delivery:
            self._head = None
            self._phase = Phase.IDLE

    def _is(self, delivery: Delivery, identity: tuple[str | None, str]) -> bool:
        message_id, digest = identity
        if delivery.message_id != message_id:
            return False
        return not digest or digest == digest_of(delivery.body)
