"""The one place an item's outcome is reported: metric, log line, event, notification.

The parking module and the non-blocking pool decide what happened to an
item; this module says it, the same way every time. Events and the log are
announcements, not state: what must last is in the state log before any of
these run (docs/parking.md). The history of what ran (`daemon.core.history`)
is fed here too, when it is on: a list append per outcome, nothing awaited.
"""

from __future__ import annotations

import time

import structlog

from common.clock import utcnow
from daemon import logs
from daemon.broker.errors import CHANNEL_ERRORS
from daemon.core import history
from daemon.core.items import Parsed
from daemon.core.metrics import FAILED_FINAL, FAILED_TRANSIENT, SKIPPED, SUCCEEDED, UNROUTED
from daemon.core.notifications import Failure, Resumed
from daemon.core.records import Failed, Parked, Scope
from daemon.core.runtime import Runtime

log = structlog.get_logger()


class Outcomes:
    """Reports items' outcomes for one daemon."""

    def __init__(self, rt: Runtime, writer: history.HistoryWriter | None = None) -> None:
        self._rt = rt
        self._history = writer  # None: S2SQ_HISTORY is off

    async def succeeded(self, parsed: Parsed, attempts: int, started: float) -> None:
        """The one log line (and, if asked for, the event) of an item that succeeded."""
        rt, item = self._rt, parsed.item
        rt.metrics.count(item.type, item.queue, SUCCEEDED)
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        logs.hot_info("item.succeeded", client_id=item.client_id, message_id=item.message_id,
                      type=item.type, queue=item.queue, attempts=attempts,
                      duration_ms=duration_ms)
        if self._history is not None:
            self._history.add(item.client_id, item.message_id, item.type, history.SUCCEEDED,
                              attempts, duration_ms, None)
        if rt.settings.succeeded_events:
            await rt.events.publish(
                "item.succeeded", client_id=item.client_id, message_id=item.message_id,
                type_=item.type, queue=item.queue, attempts=attempts, duration_ms=duration_ms,
            )

    async def attempt_failed(self, parsed: Parsed, attempt: int, error: str) -> None:
        """An attempt failed and will be tried again (in place, or after a delay)."""
        item = parsed.item
        self._rt.metrics.count(item.type, item.queue, FAILED_TRANSIENT)
        log.info("item.attempt_failed", client_id=item.client_id, message_id=item.message_id,
                 type=item.type, queue=item.queue, attempt=attempt, error=error)
        if self._history is not None:
            self._history.add(item.client_id, item.message_id, item.type, history.FAILED,
                              attempt, None, error)
        await self._rt.events.publish(
            "item.failed", client_id=item.client_id, message_id=item.message_id,
            type_=item.type, queue=item.queue, error=error, attempt=attempt, final=False,
        )

    def failed(self, record: Failed) -> None:
        """A non-blocking item's failure is in the failed store: counted, once."""
        self._rt.metrics.count(record.type, "nonblocking", FAILED_FINAL)

    async def failed_settled(self, record: Failed) -> None:
        """The failed item is acked (its notification queued): its log line and event."""
        scope, mid = record.client_id, record.message_id
        log.warning("item.failed", client_id=scope, message_id=mid, type=record.type,
                    queue="nonblocking", attempts=record.attempts, error=record.error)
        if self._history is not None:
            self._history.add(scope, mid, record.type, history.FAILED, record.attempts, None,
                              record.error)
        await self._rt.events.publish("item.failed", client_id=scope, message_id=mid,
                                      type_=record.type, queue="nonblocking",
                                      error=record.error, attempt=record.attempts, final=True)

    def parked(self, park: Parked, *, repeated: bool) -> None:
        """A park is recorded (announced separately, once)."""
        self._rt.metrics.count(park.type, "blocking", FAILED_FINAL)
        log.warning("item.parked", client_id=park.client_id, message_id=park.message_id,
                    type=park.type, queue="blocking", attempts=park.attempts, error=park.error,
                    repeated=repeated, gone=park.gone)
        if self._history is not None and not park.gone:  # a gone item did not run here
            self._history.add(park.client_id, park.message_id, park.type, history.FAILED,
                              park.attempts, None, park.error)

    def still_parked(self, park: Parked) -> None:
        log.info("item.still_parked", client_id=park.client_id, message_id=park.message_id,
                 type=park.type)

    async def announce(self, park: Parked) -> bool:
        """The park's events and notification; False if the notification was not queued."""
        rt, scope, mid = self._rt, park.client_id, park.message_id
        await rt.events.publish("item.failed", client_id=scope, message_id=mid, type_=park.type,
                                queue="blocking", error=park.error, attempt=park.attempts,
                                final=True)
        await rt.events.publish("client.parked", client_id=scope, message_id=mid,
                                type_=park.type, queue="blocking", error=park.error)
        try:
            await rt.notifier.parked(Failure(
                client_id=scope, queue="blocking", message_id=mid, type=park.type,
                error=park.error, attempts=park.attempts, at=park.failed_at,
                payload=park.payload, repeated=park.since != park.failed_at,
            ))
        except CHANNEL_ERRORS as exc:
            log.warning("notify.not_queued", client_id=scope, message_id=mid, type=park.type,
                        error=repr(exc))
            return False
        return True

    async def resumed(self, scope: Scope, park: Parked | None, how: str, actor: str) -> None:
        """A parked or paused client runs again."""
        rt = self._rt
        mid = park.message_id if park else None
        type_ = park.type if park else None
        log.info("client.resumed", client_id=scope, message_id=mid, type=type_, how=how,
                 actor=actor)
        await rt.events.publish("client.resumed", client_id=scope, message_id=mid, type_=type_,
                                queue="blocking", how=how, actor=actor)
        try:
            await rt.notifier.resumed(Resumed(scope, mid, type_, how, actor, utcnow()))
        except CHANNEL_ERRORS as exc:  # the resume stands even if its webhook is not queued
            log.warning("notify.not_queued", client_id=scope, message_id=mid, type=type_,
                        error=repr(exc))

    async def paused(self, client_id: str, actor: str) -> None:
        """A client is paused (its pause record won)."""
        await self._rt.events.publish("client.paused", client_id=client_id, message_id=None,
                                      type_=None, queue="blocking", actor=actor)
        log.info("client.paused", client_id=client_id, actor=actor)

    async def registered(self, client_id: str, actor: str) -> None:
        """A new client is registered (its queue consumed, its record written)."""
        await self._rt.events.publish("client.registered", client_id=client_id,
                                      message_id=None, type_=None, queue="blocking", actor=actor)
        log.info("client.registered", client_id=client_id, actor=actor)

    async def skipped(self, client_id: str, message_id: str | None, type_: str | None,
                      queue: str, actor: str, reason: str | None) -> None:
        """An item was archived without running (a parked one, or a failed one)."""
        self._rt.metrics.count(type_, queue, SKIPPED)
        log.info("item.skipped", client_id=client_id, message_id=message_id, type=type_,
                 queue=queue, actor=actor, reason=reason)
        if self._history is not None:
            self._history.add(client_id, message_id, type_, history.SKIPPED, None, None, None)
        await self._rt.events.publish("item.skipped", client_id=client_id, message_id=message_id,
                                      type_=type_, queue=queue, actor=actor, reason=reason)

    async def unrouted(self, client_id: str, message_id: str | None, type_: str | None) -> None:
        """A blocking item for a client that is not registered landed in the unrouted queue."""
        self._rt.metrics.count(type_, "blocking", UNROUTED)
        log.info("item.unrouted", client_id=client_id, message_id=message_id, type=type_,
                 queue="blocking")
        await self._rt.events.publish("item.unrouted", client_id=client_id,
                                      message_id=message_id, type_=type_, queue="blocking")
