"""One client's blocking queue: strict FIFO, prefetch 1, park on failure (SPEC section 4).

The consumer holds the head item unacked while it runs, while it waits for
an in-place retry, while the client is parked and while it is paused. It
never cancels its consumer while holding a delivery (DESIGN.md fact 1: on a
single-active-consumer queue that breaks order, or hangs a classic queue):
a queue is handed back only by closing the channel, which requeues the held
item at the head.

What must survive the process (parks, pauses) goes to the state log before
it is announced; a redelivered head item that the log says is parked is
held again without running.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import aiormq.abc
import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from daemon.delivery import Delivery
from daemon.items import BadItem, Parsed, parse_item, payload_for_display
from daemon.metrics import FAILED_FINAL, FAILED_TRANSIENT, SKIPPED
from daemon.notifications import Failure, Resumed
from daemon.runtime import (
    Runtime,
    backoff,
    call_handler,
    notify_resumed,
    payload_dict,
    report_success,
)
from daemon.state import Record, utcnow
from daemon.topology import declare_client_queue
from handlers.errors import HandlerError, TransientError

log = structlog.get_logger()


class OperationError(Exception):
    """Raised when an admin action cannot be carried out; the message says why."""


class UnknownClient(OperationError):
    """Raised when an action names a client that is not registered."""


class BlockingConsumer:
    """Runs one client's items one at a time and parks the client on failure."""

    def __init__(self, client_id: str, rt: Runtime) -> None:
        self.client_id = client_id
        self._rt = rt
        self._queue: AbstractQueue | None = None
        self._head: Delivery | None = None
        self._parked: Record | None = None
        self._running: asyncio.Task[Any] | None = None
        self._resumed: asyncio.Task[None] | None = None
        # Succeeded, but the ack died with its channel: its redelivery is acked unrun.
        self._done_unacked: str | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        return f"<BlockingConsumer {self.client_id} {self.state}>"

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> str:
        """`parked`, `paused` or `running` (SPEC section 8)."""
        if self._parked is not None:
            return "parked"
        return "paused" if self.paused else "running"

    @property
    def paused(self) -> bool:
        return self.client_id in self._rt.state.view.paused

    @property
    def parked(self) -> Record | None:
        """The park record of the item held at the head, if the client is parked here."""
        return self._parked

    @property
    def busy(self) -> bool:
        """True while an item is running (not while parked or paused)."""
        return not self._idle.is_set()

    # -- lifecycle -----------------------------------------------------------

    async def start(self, channel: AbstractChannel) -> None:
        """Declare the queue on `channel` and start consuming (prefetch 1 set on the channel)."""
        self._queue = await declare_client_queue(channel, self._rt.topo, self.client_id)
        underlay = await channel.get_underlay_channel()
        await underlay.basic_consume(self._queue.name, self._on_delivery)

    async def _on_delivery(self, message: aiormq.abc.DeliveredMessage) -> None:
        await self._on_message(Delivery(message))

    def begin_stop(self) -> None:
        """Take no new item; what is held is handed back when the channel closes."""
        self._stopping = True

    async def wait_idle(self) -> None:
        """Wait until no item is running."""
        await self._idle.wait()

    def cancel_running(self) -> None:
        """Interrupt a running item (shutdown timeout); it is redelivered later."""
        if self._running is not None:
            self._running.cancel()

    def channel_lost(self) -> None:
        """The channel closed: its delivery tags are void, the broker requeued the head.

        A run in progress goes on; the redelivery waits for it (see `_on_message`).
        """
        self._head = None
        self._parked = None
        self._queue = None

    def on_resume(self) -> None:
        """A resume record arrived: run the item held while paused, if any."""
        if self._head is not None and self._parked is None and not self.busy and not self.paused:
            self._resumed = asyncio.get_running_loop().create_task(self._run_guarded(self._head))

    # -- delivery ------------------------------------------------------------

    async def _on_message(self, message: Delivery) -> None:
        if self.busy:
            # A run that began on a channel since lost is still going (consumer_timeout,
            # say): never run one item twice at the same time.
            log.info("item.waiting_for_previous_run", client_id=self.client_id,
                     message_id=message.message_id)
            await self._idle.wait()
        if self._stopping:
            return  # never started: handed back when the channel closes
        if message.message_id is not None and message.message_id == self._done_unacked:
            self._done_unacked = None
            log.info("item.already_done", client_id=self.client_id,
                     message_id=message.message_id, type=message.type)
            await message.ack()
            return
        self._head = message
        try:
            if await self._restore_park(message):
                return
            if self.paused:
                log.info("item.held", client_id=self.client_id, message_id=message.message_id,
                         reason="paused")
                return
            await self._run_guarded(message)
        except (AMQPError, ChannelInvalidStateError) as exc:
            # The channel or connection went away mid-item: the broker requeued the
            # item at the head and will deliver it again (at-least-once).
            log.warning("item.interrupted", client_id=self.client_id,
                        message_id=message.message_id, type=message.type, error=repr(exc))
        except Exception:
            log.exception("item.crashed", client_id=self.client_id,
                          message_id=message.message_id, type=message.type)

    async def _restore_park(self, message: Delivery) -> bool:
        """Hold `message` again if the state log says it is the parked item.

        A redelivered head item may be parked (held again, unrun, unannounced) or
        interrupted while running (run again: at-least-once). Another replica may
        have parked it just before dying, so read the log up to now first; a first
        delivery costs no round trip.
        """
        if message.redelivered:
            await self._rt.state.sync()
        record = self._rt.state.view.parked.get(self.client_id)
        if record is None:
            return False
        if record.get("message_id") == message.message_id and message.redelivered:
            self._parked = record
            log.info("item.still_parked", client_id=self.client_id,
                     message_id=message.message_id, type=record.get("type"))
            if not record.get("announced"):
                await self._announce(record)
            return True
        # The parked item is gone (acked just before a crash): the record is stale.
        await self._rt.state.append(
            {"kind": "unpark", "client_id": self.client_id,
             "message_id": record.get("message_id"), "how": "gone", "actor": "s2s-queue"}
        )
        return False

    async def _run_guarded(self, message: Delivery) -> None:
        """Run the head item with the idle flag and task handle kept right."""
        self._idle.clear()
        self._running = asyncio.current_task()
        try:
            await self._run(message)
        finally:
            self._running = None
            self._idle.set()

    def _parse(self, message: Delivery) -> Parsed | BadItem:
        rt = self._rt
        return parse_item(
            body=message.body,
            content_type=message.content_type,
            message_id=message.message_id,
            type_=message.type,
            headers=message.headers,
            client_id=self.client_id,
            queue="blocking",
            handlers=rt.handlers,
            max_body_bytes=rt.settings.max_body_bytes,
        )

    async def _run(self, message: Delivery) -> None:
        parsed = self._parse(message)
        if isinstance(parsed, BadItem):
            await self._park(message, parsed.message_id, parsed.type, parsed.error, attempts=0)
            return
        settings = self._rt.settings
        started = time.monotonic()
        for attempt in range(1, settings.blocking_attempts + 1):
            try:
                await call_handler(parsed, attempt, self._rt.context, settings.handler_timeout,
                                   self._rt.metrics)
            except HandlerError as exc:
                last = attempt == settings.blocking_attempts or not isinstance(exc, TransientError)
                if last:
                    await self._park(message, parsed.item.message_id, parsed.item.type,
                                     str(exc), attempts=attempt, parsed=parsed)
                    return
                await self._attempt_failed(parsed, attempt, exc)
                await asyncio.sleep(
                    backoff(attempt, settings.blocking_backoff, settings.blocking_backoff_max)
                )
            else:
                await self._succeeded(message, parsed, attempt, started)
                return

    async def _attempt_failed(self, parsed: Parsed, attempt: int, exc: HandlerError) -> None:
        item = parsed.item
        self._rt.metrics.count(item.type, "blocking", FAILED_TRANSIENT)
        log.info("item.attempt_failed", client_id=self.client_id, message_id=item.message_id,
                 type=item.type, attempt=attempt, error=str(exc))
        await self._rt.events.publish(
            "item.failed", client_id=self.client_id, message_id=item.message_id,
            type_=item.type, queue="blocking", error=str(exc), attempt=attempt, final=False,
        )

    async def _succeeded(
        self, message: Delivery, parsed: Parsed, attempts: int, started: float
    ) -> None:
        item = parsed.item
        try:
            await message.ack()
        except (AMQPError, ChannelInvalidStateError):
            self._done_unacked = item.message_id
            log.warning("item.ack_lost", client_id=self.client_id, message_id=item.message_id,
                        type=item.type)
        if self._head is message:
            self._head = None
        await report_success(self._rt, parsed, attempts, started)

    async def _park(
        self,
        message: Delivery,
        message_id: str | None,
        type_: str | None,
        error: str,
        *,
        attempts: int,
        parsed: Parsed | None = None,
        since: str | None = None,
    ) -> None:
        """Record the park, then announce it: one event and one notification per park."""
        payload = payload_dict(parsed) if parsed else payload_for_display(message.body)
        now = utcnow()
        record: Record = {
            "kind": "park", "client_id": self.client_id, "message_id": message_id,
            "type": type_, "error": error, "attempts": attempts, "since": since or now,
            "failed_at": now, "payload": payload,
        }
        try:
            await self._rt.state.append(record)
        except Exception:
            log.exception("state.park_not_recorded", client_id=self.client_id,
                          message_id=message_id)
        self._parked = record
        self._rt.metrics.count(type_, "blocking", FAILED_FINAL)
        log.warning("item.parked", client_id=self.client_id, message_id=message_id,
                    type=type_, queue="blocking", attempts=attempts, error=error,
                    repeated=since is not None)
        await self._announce(record)

    async def _announce(self, record: Record) -> None:
        """Publish the park's events and notify, then record that it was announced.

        A daemon that dies between the park record and this leaves the park
        unannounced; whoever holds the item next announces it (`_restore_park`).
        """
        mid, type_, error = record.get("message_id"), record.get("type"), record["error"]
        attempts = int(record.get("attempts") or 0)
        events = self._rt.events
        await events.publish("item.failed", client_id=self.client_id, message_id=mid,
                             type_=type_, queue="blocking", error=error, attempt=attempts,
                             final=True)
        await events.publish("client.parked", client_id=self.client_id, message_id=mid,
                             type_=type_, queue="blocking", error=error)
        try:
            await self._rt.notifier.parked(Failure(
                client_id=self.client_id, queue="blocking", message_id=mid, type=type_,
                error=error, attempts=attempts, at=record["failed_at"],
                payload=record.get("payload"), repeated=record["since"] != record["failed_at"],
            ))
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            # Not recorded as announced: whoever holds the item next announces it.
            log.warning("notify.not_queued", client_id=self.client_id, message_id=mid,
                        type=type_, error=repr(exc))
            return
        try:
            await self._rt.state.append({"kind": "announced", "client_id": self.client_id,
                                         "message_id": mid, "failed_at": record["failed_at"]})
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            # The next holder announces it again; the outbox sends it once.
            log.warning("park.announce_not_recorded", client_id=self.client_id,
                        message_id=mid, type=type_, error=repr(exc))
            return
        log.info("park.announced", client_id=self.client_id, message_id=mid, type=type_)

    # -- admin actions ---------------------------------------------------------

    def _check_parked(self, message_id: str | None) -> tuple[Delivery, Record]:
        if self._parked is None or self._head is None:
            raise OperationError(f"client {self.client_id!r} is not parked")
        parked_id = self._parked.get("message_id")
        if message_id is not None and message_id != parked_id:
            raise OperationError(
                f"message {message_id!r} is not the parked item of client {self.client_id!r}"
                f" (the parked item is {parked_id!r})"
            )
        return self._head, self._parked

    async def retry(self, message_id: str | None, actor: str, reason: str | None) -> dict[str, Any]:
        """Run the parked item once now; resume on success, stay parked on failure."""
        async with self._lock:
            message, record = self._check_parked(message_id)
            parsed = self._parse(message)
            attempts = int(record.get("attempts") or 0) + 1
            started = time.monotonic()
            log.info("item.retry", client_id=self.client_id, message_id=record.get("message_id"),
                     actor=actor, reason=reason)
            try:
                if isinstance(parsed, BadItem):
                    raise OperationError(parsed.error)
                await call_handler(parsed, attempts, self._rt.context,
                                   self._rt.settings.handler_timeout, self._rt.metrics)
            except (HandlerError, OperationError) as exc:
                await self._park(message, record.get("message_id"), record.get("type"), str(exc),
                                 attempts=attempts, parsed=parsed if isinstance(parsed, Parsed)
                                 else None, since=record.get("since"))
                return {"outcome": "failed", "error": str(exc),
                        "message_id": record.get("message_id")}
            self._parked = None
            await self._succeeded(message, parsed, attempts, started)
            await self._unparked(record, "retry", actor, reason)
            return {"outcome": "succeeded", "message_id": record.get("message_id")}

    async def skip(self, message_id: str | None, actor: str, reason: str | None) -> dict[str, Any]:
        """Archive the parked item with who skipped it and why, then resume."""
        async with self._lock:
            message, record = self._check_parked(message_id)
            await self._archive(message, record, actor, reason)
            await message.ack()
            self._parked = None
            if self._head is message:
                self._head = None
            mid = record.get("message_id")
            self._rt.metrics.count(record.get("type"), "blocking", SKIPPED)
            log.info("item.skipped", client_id=self.client_id, message_id=mid,
                     type=record.get("type"), queue="blocking", actor=actor, reason=reason)
            await self._rt.events.publish(
                "item.skipped", client_id=self.client_id, message_id=mid,
                type_=record.get("type"), queue="blocking", actor=actor, reason=reason,
            )
            await self._unparked(record, "skip", actor, reason)
            return {"message_id": mid}

    async def _archive(
        self, message: Delivery, record: Record, actor: str, reason: str | None
    ) -> None:
        headers = dict(message.headers or {})
        headers.update({
            "x-s2s-skipped-by": actor, "x-s2s-skip-reason": reason or "",
            "x-s2s-skipped-at": utcnow(), "x-s2s-error": record.get("error") or "",
            "x-s2s-queue": "blocking",
        })
        await self._rt.publish_confirmed(
            aio_pika.Message(
                message.body, headers=headers, content_type=message.content_type,
                message_id=message.message_id, type=message.type, timestamp=message.timestamp,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self._rt.topo.archive,
        )

    async def _unparked(self, record: Record, how: str, actor: str, reason: str | None) -> None:
        mid = record.get("message_id")
        await self._rt.state.append({"kind": "unpark", "client_id": self.client_id,
                                     "message_id": mid, "how": how, "actor": actor,
                                     "reason": reason})
        await self._rt.events.publish("client.resumed", client_id=self.client_id,
                                      message_id=mid, type_=record.get("type"),
                                      queue="blocking", how=how, actor=actor)
        await notify_resumed(self._rt, Resumed(self.client_id, mid, record.get("type"), how,
                                               actor, utcnow()))
