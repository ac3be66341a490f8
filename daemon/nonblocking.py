"""The shared non-blocking queue: competing consumers, delayed retries, failed items.

Up to `S2SQ_NONBLOCKING_CONCURRENCY` items run at once per daemon (prefetch).
A transient failure is republished, with a publisher confirm, to the delay
queue of the next delay of `S2SQ_NONBLOCKING_RETRY_DELAYS` (which
dead-letters it back to the work queue when its time is up) and only then
acked: the slot is free at once and nothing is lost between the two queues.
A permanent failure, the last transient one, or bad input becomes a `failed`
record in the state log (with the whole message, its error history and
attempts), again before the ack; `retry_failed` publishes it anew with a
fresh retry budget, `skip_failed` archives it.

Every move is safe to repeat after a crash: a redelivered item that the state
log already holds as failed is acked without running again; one that was
already republished to a delay queue runs twice at most (at-least-once).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

from daemon.items import BadItem, Parsed, parse_item, payload_for_display
from daemon.metrics import FAILED_FINAL, FAILED_TRANSIENT
from daemon.notifications import failure_from_record
from daemon.runtime import Runtime, call_handler, report_success
from daemon.state import Record, utcnow
from handlers.errors import HandlerError, TransientError

log = structlog.get_logger()

ATTEMPT = "x-s2s-attempt"  # attempts made so far
ERRORS = "x-s2s-errors"  # JSON list of {"attempt", "error", "at"}


def error_history(headers: dict[str, Any]) -> list[dict[str, Any]]:
    """The errors of earlier attempts, carried in a header (pure)."""
    raw = headers.get(ERRORS)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        history = orjson.loads(raw) if isinstance(raw, str) else []
    except orjson.JSONDecodeError:
        return []
    return history if isinstance(history, list) else []


def message_record(message: AbstractIncomingMessage) -> Record:
    """What is needed to publish the item again, as JSON."""
    try:
        body, encoding = message.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(message.body).decode(), "base64"
    headers = {k: v for k, v in (message.headers or {}).items()
               if k in ("client_id",) and isinstance(v, str)}
    return {"body": body, "body_encoding": encoding, "content_type": message.content_type,
            "headers": headers}


def rebuild(record: Record) -> aio_pika.Message:
    """A fresh message (fresh retry budget) from a failed record."""
    stored = record.get("message", {})
    raw = stored.get("body", "")
    body = base64.b64decode(raw) if stored.get("body_encoding") == "base64" else raw.encode()
    return aio_pika.Message(
        body, content_type=stored.get("content_type"), message_id=record.get("message_id"),
        type=record.get("type"), headers=dict(stored.get("headers", {})),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class NonBlockingPool:
    """Consumes the shared queue with a bounded number of items in flight."""

    def __init__(self, connection: AbstractRobustConnection, rt: Runtime) -> None:
        self._connection = connection
        self._rt = rt
        self._channel: AbstractChannel | None = None
        self._running: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._delays = rt.settings.retry_delays

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=False)
        await self._channel.set_qos(prefetch_count=self._rt.settings.nonblocking_concurrency)
        queue = await self._channel.get_queue(self._rt.topo.nonblocking, ensure=False)
        await queue.consume(self._on_message)

    def begin_stop(self) -> None:
        """Start no new item; those not started go back when the channel closes."""
        self._stopping = True

    async def drain(self, timeout: float) -> None:
        """Let running items finish within `timeout`, then interrupt the rest and close."""
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    # -- one item ----------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            return  # never started: handed back when the channel closes
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            await self._handle(message)
        except (AMQPError, ChannelInvalidStateError) as exc:
            log.warning("item.interrupted", message_id=message.message_id, type=message.type,
                        queue="nonblocking", error=repr(exc))
        except Exception:
            log.exception("item.crashed", message_id=message.message_id, type=message.type,
                          queue="nonblocking")
        finally:
            self._running.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        if message.redelivered and await self._already_failed(message):
            return
        parsed = self._parse(message)
        headers = dict(message.headers or {})
        made = headers.get(ATTEMPT)
        attempt = (made if isinstance(made, int) else 0) + 1
        if isinstance(parsed, BadItem):
            await self._fail(message, parsed.client_id, parsed.type, parsed.error, attempt,
                             headers, payload=payload_for_display(message.body))
            return
        started = time.monotonic()
        try:
            await call_handler(parsed, attempt, self._rt.context,
                               self._rt.settings.handler_timeout, self._rt.metrics)
        except HandlerError as exc:
            await self._failed_attempt(message, parsed, exc, attempt, headers)
            return
        await message.ack()
        await report_success(self._rt, parsed, attempt, started)

    async def _already_failed(self, message: AbstractIncomingMessage) -> bool:
        """A crash between recording a failure and the ack: ack, do not run again."""
        await self._rt.state.sync()
        record = self._rt.state.view.failed.get(message.message_id or "")
        if record is not None:
            log.info("item.already_failed", message_id=message.message_id, type=message.type)
            if await self._notify(message, record):
                await message.ack()
            return True
        return False

    async def _notify(self, message: AbstractIncomingMessage, record: Record) -> bool:
        """Queue the failure's notification; if the broker refused, hand the item back."""
        try:
            await self._rt.notifier.failed(failure_from_record(record))
        except (AMQPError, ChannelInvalidStateError, ConnectionError) as exc:
            log.warning("notify.not_queued", client_id=record.get("client_id"),
                        message_id=record.get("message_id"), type=record.get("type"),
                        error=repr(exc))
            await message.nack(requeue=True)  # redelivered: `_already_failed` tries again
            return False
        return True

    def _parse(self, message: AbstractIncomingMessage) -> Parsed | BadItem:
        headers = message.headers or {}
        first_time = message.exchange == self._rt.topo.nonblocking
        # A retried item comes back from its delay queue with the work queue's name
        # as routing key; the producer's routing key is checked on the first run.
        client = message.routing_key if first_time else headers.get("client_id")
        return parse_item(
            body=message.body, content_type=message.content_type,
            message_id=message.message_id, type_=message.type, headers=headers,
            client_id=str(client or ""), queue="nonblocking", handlers=self._rt.handlers,
            max_body_bytes=self._rt.settings.max_body_bytes,
        )

    async def _failed_attempt(
        self, message: AbstractIncomingMessage, parsed: Parsed, exc: HandlerError,
        attempt: int, headers: dict[str, Any],
    ) -> None:
        item = parsed.item
        if not isinstance(exc, TransientError) or attempt > len(self._delays):
            await self._fail(message, item.client_id, item.type, str(exc), attempt, headers,
                             payload=parsed.item.payload.model_dump(mode="json"))
            return
        delay = self._delays[attempt - 1]
        history = [*error_history(headers), {"attempt": attempt, "error": str(exc),
                                             "at": utcnow()}]
        retry = aio_pika.Message(
            message.body, content_type=message.content_type, message_id=message.message_id,
            type=message.type, timestamp=message.timestamp,
            headers={"client_id": item.client_id, ATTEMPT: attempt,
                     ERRORS: orjson.dumps(history).decode()},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._rt.publish_confirmed(retry, routing_key=self._rt.topo.delay_queue(delay))
        await message.ack()
        self._rt.metrics.count(item.type, "nonblocking", FAILED_TRANSIENT)
        log.info("item.retry_later", client_id=item.client_id, message_id=item.message_id,
                 type=item.type, queue="nonblocking", attempt=attempt, delay_s=delay,
                 error=str(exc))
        await self._rt.events.publish(
            "item.failed", client_id=item.client_id, message_id=item.message_id,
            type_=item.type, queue="nonblocking", error=str(exc), attempt=attempt, final=False,
        )

    async def _fail(
        self, message: AbstractIncomingMessage, client_id: str, type_: str | None, error: str,
        attempt: int, headers: dict[str, Any], *, payload: Any,
    ) -> None:
        """Move the item to the failed store (the state log), then ack it."""
        now = utcnow()
        history = [*error_history(headers), {"attempt": attempt, "error": error, "at": now}]
        # An item without a message_id still needs an address for retry/skip.
        message_id = message.message_id or f"no-message-id-{uuid.uuid4().hex}"
        record: Record = {
            "kind": "failed", "message_id": message_id, "client_id": client_id,
            "type": type_, "error": error, "errors": history, "attempts": attempt,
            "failed_at": now, "payload": payload, "message": message_record(message),
        }
        await self._rt.state.append(record)
        self._rt.metrics.count(type_, "nonblocking", FAILED_FINAL)
        # Queued before the ack: a crash in between redelivers the item, and
        # `_already_failed` queues it again (the outbox sends it once).
        if not await self._notify(message, record):
            return
        await message.ack()
        log.warning("item.failed", client_id=client_id, message_id=message_id,
                    type=type_, queue="nonblocking", attempts=attempt, error=error)
        await self._rt.events.publish(
            "item.failed", client_id=client_id, message_id=message_id, type_=type_,
            queue="nonblocking", error=error, attempt=attempt, final=True,
        )
