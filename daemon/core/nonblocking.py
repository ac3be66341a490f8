"""The shared non-blocking queue: competing consumers, delayed retries, failed items.

Up to `S2SQ_NONBLOCKING_CONCURRENCY` items run at once per daemon (prefetch).
Each delivery ends in exactly one fate, settled once (docs/parking.md):

* **ack** — it succeeded, or a crash came between recording its failure and
  its ack (it is already in the failed store);
* **retry later** — a transient failure: republished, with a publisher
  confirm, to the delay queue of the next delay of
  `S2SQ_NONBLOCKING_RETRY_DELAYS` (which dead-letters it back to the work
  queue when its time is up), then acked: the slot is free at once;
* **failed** — a permanent failure, the last transient one, bad input, or an
  error in our own code: a `failed` record with the whole message, its error
  history and attempts, the notification queued, then acked;
* **requeue** — the broker refused the record or the publish: nacked back
  after a pause, to be tried again.

No exception leaves a delivery held: a slot is never lost (hole 1 of the
release-2 review: an integer wider than 64 bits used to stop the pool).

Deliveries come straight from aiormq (`daemon.broker.delivery.AmqpDelivery`), as the
blocking consumers' do: no aio-pika `IncomingMessage` per item. The channel is
still aio-pika's robust one (it reopens after a loss and restores its QoS);
its `reopen_callbacks` consume again, since aio-pika only restores its own
consumers. The success line goes through `logs.hot_info`, not structlog's
processor chain (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import aio_pika
import aiormq.abc
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from structlog.contextvars import bind_contextvars, reset_contextvars

from common.clock import utcnow
from daemon.broker.delivery import AmqpDelivery
from daemon.broker.errors import CHANNEL_ERRORS
from daemon.core.failed import GENERATION
from daemon.core.items import BadItem, Parsed, parse_item
from daemon.core.notifications import failure_from_record
from daemon.core.outcomes import Outcomes
from daemon.core.records import (
    Failed,
    Redelivered,
    StoredMessage,
    digest_of,
    display_payload,
    jsonable,
    short_error,
)
from daemon.core.runtime import Runtime, call_handler
from daemon.tasks import Tasks
from handlers.errors import HandlerError, TransientError

log = structlog.get_logger()

ATTEMPT = "x-s2s-attempt"  # attempts made so far
ERRORS = "x-s2s-errors"  # JSON list of {"attempt", "error", "at"}
FENCED_AGAIN = 5  # a failed record fenced this often in a row: the copy goes back
MAX_ATTEMPT_HEADER = 1000
REQUEUE_PAUSE_S = 1.0


def attempts_made(headers: dict[str, Any]) -> int:
    """Attempts made so far, from the header (pure); anything odd counts as none."""
    made = headers.get(ATTEMPT)
    if isinstance(made, bool) or not isinstance(made, int) or not 0 <= made <= MAX_ATTEMPT_HEADER:
        return 0
    return made


def generation_of(headers: dict[str, Any]) -> str:
    """Which copy of an item this is (pure): "" for the producer's and its delayed retries."""
    value = headers.get(GENERATION)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def error_history(headers: dict[str, Any]) -> list[dict[str, Any]]:
    """The errors of earlier attempts, carried in a header (pure)."""
    raw = headers.get(ERRORS)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        history = orjson.loads(raw) if isinstance(raw, str) else []
    except orjson.JSONDecodeError:
        return []
    if not isinstance(history, list):
        return []
    return [h for h in history if isinstance(h, dict)][-20:]


def stored_message(message: AmqpDelivery | AbstractIncomingMessage) -> StoredMessage:
    """What is needed to publish the item again."""
    client = (message.headers or {}).get("client_id")
    headers = {"client_id": client} if isinstance(client, str) else {}
    content_type = message.content_type if isinstance(message.content_type, str) else None
    try:
        text = message.body.decode("utf-8")
    except UnicodeDecodeError:
        return StoredMessage(body=base64.b64encode(message.body).decode(),
                             body_encoding="base64", content_type=content_type, headers=headers)
    return StoredMessage(body=text, content_type=content_type, headers=headers)


@dataclass(slots=True)
class Held:
    """A delivery in a slot, settled exactly once."""

    message: AmqpDelivery
    settled: bool = False
    generation: str = ""
    count: int | None = None  # the claim count this replica holds a redelivered copy under

    async def ack(self) -> None:
        self.settled = True
        await self.message.ack()

    async def requeue(self) -> None:
        """Hand it back to the queue after a pause (never in a tight loop)."""
        if self.settled:
            return
        self.settled = True
        await asyncio.sleep(REQUEUE_PAUSE_S)
        with contextlib.suppress(*CHANNEL_ERRORS, RuntimeError):
            await self.message.nack(requeue=True)


class NonBlockingPool:
    """Consumes the shared queue with a bounded number of items in flight."""

    def __init__(self, connection: AbstractRobustConnection, rt: Runtime,
                 outcomes: Outcomes) -> None:
        self._connection = connection
        self._rt = rt
        self._outcomes = outcomes
        self._channel: AbstractRobustChannel | None = None
        self._running = Tasks()  # the deliveries' callback tasks, while they run
        self._stopping = False
        self._delays = rt.settings.retry_delays

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)  # reopens after a loss
        self._channel = channel
        await channel.set_qos(prefetch_count=self._rt.settings.nonblocking_concurrency)
        await channel.declare_queue(self._rt.topo.nonblocking, passive=True)  # it exists
        channel.reopen_callbacks.add(self._on_reopened)
        await self._consume()

    async def _consume(self) -> None:
        assert self._channel is not None
        underlay = await self._channel.get_underlay_channel()
        await underlay.basic_consume(self._rt.topo.nonblocking, self._on_delivery)

    async def _on_reopened(self, *_: Any) -> None:
        """The robust channel came back (a lost connection or channel): consume again."""
        if self._stopping:
            return
        try:
            await self._consume()
        except Exception as exc:  # the channel went again: its next reopen tries again
            log.warning("nonblocking.not_resumed", error=repr(exc))

    def begin_stop(self) -> None:
        """Start no new item; those not started go back when the channel closes."""
        self._stopping = True

    async def drain(self, timeout: float) -> None:
        """Let running items finish within `timeout`, then interrupt the rest and close."""
        await self._running.stop(timeout)
        if self._channel is not None and not self._channel.is_closed:
            self._channel.reopen_callbacks.discard(self._on_reopened)
            await self._channel.close()

    # -- one item ----------------------------------------------------------------------

    async def _on_delivery(self, delivered: aiormq.abc.DeliveredMessage) -> None:
        if self._stopping:
            return  # never started: handed back when the channel closes
        message = AmqpDelivery(delivered)
        # Every log line of this delivery carries them (daemon/logs.py merges them in);
        # bound_contextvars without its generator: a third of the cost per item.
        tokens = bind_contextvars(client_id=self._client_of(message),
                                  message_id=message.message_id, type=message.type)
        try:
            with self._running.running():
                await self._guarded(Held(message))
        finally:
            reset_contextvars(**tokens)

    async def _guarded(self, held: Held) -> None:
        """Handle the delivery; no exception leaves it held."""
        try:
            await self._handle(held)
        except asyncio.CancelledError:
            raise  # shutdown or a lost channel: the broker hands it back
        except CHANNEL_ERRORS as exc:
            log.warning("item.interrupted", queue="nonblocking", error=repr(exc))
            await held.requeue()
        except Exception as exc:  # our own bug: the item is set aside, the slot freed
            log.exception("item.crashed", queue="nonblocking")
            await self._crashed(held, exc)

    async def _crashed(self, held: Held, exc: Exception) -> None:
        if held.settled:
            return
        try:
            await self._fail(held, self._client_of(held.message), _str(held.message.type),
                             f"internal error in s2s-queue: {type(exc).__name__}: {exc}",
                             attempts_made(held.message.headers) + 1,
                             display_payload(held.message.body))
        except Exception:
            log.exception("item.not_recorded")
            await held.requeue()

    async def _handle(self, held: Held) -> None:
        message = held.message
        headers = message.headers  # a copy of its own (AmqpDelivery)
        held.generation = generation_of(headers)
        if message.redelivered:
            await self._claim(held)
            if await self._already_failed(held):
                return
        parsed = self._parse(message)
        attempt = attempts_made(headers) + 1
        if isinstance(parsed, BadItem):
            await self._fail(held, parsed.client_id, parsed.type, parsed.error, attempt,
                             display_payload(message.body))
            return
        started = time.monotonic()
        try:
            await call_handler(parsed, attempt, self._rt.context,
                               self._rt.settings.handler_timeout, self._rt.metrics)
        except HandlerError as exc:
            await self._failed_attempt(held, parsed, exc, attempt, headers)
            return
        await held.ack()
        await self._outcomes.succeeded(parsed, attempt, started)

    async def _claim(self, held: Held) -> None:
        """Claim a redelivered copy: a `failed` record of the replica that held it before is
        then void (docs/parking.md, "The failed store"). A claim that another beat is
        written again on the newer count."""
        message_id = _str(held.message.message_id)
        if not message_id:
            return  # nothing to fence by: it can only fail, under a fresh address
        state = self._rt.state
        while True:  # read back, our claim lost only to one the view now holds: try on it
            claim = uuid.uuid4().hex
            seen = state.view.copy_count(message_id)
            await state.append_and_read(Redelivered(message_id=message_id, seen=seen,
                                                    claim=claim))
            count, won = state.view.copies.get(message_id, (0, ""))
            if won == claim:
                held.count = count
                return

    async def _already_failed(self, held: Held) -> bool:
        """This copy's failure was recorded before a crash (or a lost ack): ack it unrun.

        Told by (message id, generation, body): a copy a `retry_failed` sent since has
        a generation of its own, and runs.
        """
        message = held.message
        view = self._rt.state.view
        spent = view.spent.get((_str(message.message_id) or "", held.generation))
        if spent is None or spent[1] not in ("", digest_of(message.body)):
            return False
        fid = spent[0]
        log.info("item.already_failed")
        where = view.fids.get(fid)
        if where is not None and where[0] == "failed":  # still failed: notify (again)
            await self._notify(held, view.failed[where[1]].record)
        await held.ack()
        return True

    async def _notify(self, held: Held, record: Failed) -> None:
        """Queue the failure's notification; if the broker refused, hand the item back."""
        try:
            await self._rt.notifier.failed(failure_from_record(record))
        except CHANNEL_ERRORS as exc:
            log.warning("notify.not_queued", client_id=record.client_id,
                        message_id=record.message_id, type=record.type, error=repr(exc))
            raise  # requeued: redelivered, `_already_failed` queues it again

    def _client_of(self, message: AmqpDelivery) -> str:
        # A retried item comes back from its delay queue with the work queue's name
        # as routing key; the producer's routing key is checked on the first run.
        if message.exchange == self._rt.topo.nonblocking:
            return _str(message.routing_key) or ""
        return _str(message.headers.get("client_id")) or ""

    def _parse(self, message: AmqpDelivery) -> Parsed | BadItem:
        return parse_item(
            body=message.body, content_type=message.content_type,
            message_id=message.message_id, type_=message.type, headers=message.headers,
            client_id=self._client_of(message), queue="nonblocking",
            handlers=self._rt.handlers, max_body_bytes=self._rt.settings.max_body_bytes,
        )

    async def _failed_attempt(self, held: Held, parsed: Parsed, exc: HandlerError,
                              attempt: int, headers: dict[str, Any]) -> None:
        item = parsed.item
        if not isinstance(exc, TransientError) or attempt > len(self._delays):
            await self._fail(held, item.client_id, item.type, str(exc), attempt,
                             display_payload(held.message.body))  # as the producer sent it
            return
        message = held.message
        delay = self._delays[attempt - 1]
        error = short_error(str(exc))
        history = [*error_history(headers), {"attempt": attempt, "error": error, "at": utcnow()}]
        retry = aio_pika.Message(
            message.body, content_type=message.content_type, message_id=message.message_id,
            type=message.type, timestamp=message.timestamp,
            headers={"client_id": item.client_id, ATTEMPT: attempt,
                     ERRORS: orjson.dumps(jsonable(history)).decode(),
                     **({GENERATION: held.generation} if held.generation else {})},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await self._rt.publish_confirmed(retry, routing_key=self._rt.topo.delay_queue(delay))
        await held.ack()
        log.info("item.retry_later", type=item.type, queue="nonblocking", attempt=attempt,
                 delay_s=delay)
        await self._outcomes.attempt_failed(parsed, attempt, error)

    async def _fail(self, held: Held, client_id: str, type_: str | None, error: str,
                    attempt: int, payload: Any) -> None:
        """Move the item to the failed store (the state log), queue its notification, ack."""
        message = held.message
        now = utcnow()
        error = short_error(error)
        history = [*error_history(message.headers),
                   {"attempt": attempt, "error": error, "at": now}]
        # An item without a message_id still needs an address for retry/skip.
        message_id = _str(message.message_id) or f"no-message-id-{uuid.uuid4().hex}"
        record = Failed(message_id=message_id, fid=uuid.uuid4().hex, client_id=client_id,
                        type=type_, error=error, errors=history, attempts=attempt,
                        failed_at=now, payload=payload, message=stored_message(message),
                        generation=held.generation)
        if not await self._record_failure(held, record):
            await held.requeue()
            return
        self._outcomes.failed(record)
        # Queued before the ack: a crash in between redelivers the item, and
        # `_already_failed` queues it again (the outbox sends it once).
        await self._notify(held, record)
        await held.ack()
        await self._outcomes.failed_settled(record)

    async def _record_failure(self, held: Held, record: Failed) -> bool:
        """Write the failure under the copy's claim count; read it back; again if fenced.

        It is fenced only when another copy of the item (a documented duplicate) was
        claimed meanwhile; False if that keeps happening (the copy then goes back).
        """
        state = self._rt.state
        has_id = _str(held.message.message_id) is not None
        count = held.count
        for _ in range(FENCED_AGAIN):
            if has_id and count is None:
                count = state.view.copy_count(record.message_id)
            await state.append_and_read(replace(record, count=count if has_id else None))
            if record.fid in state.view.fids:
                return True
            log.info("item.failed_fenced", message_id=record.message_id)
            count = None  # read the newer count and write it again
        log.error("item.failed_not_recorded", message_id=record.message_id)
        return False


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
