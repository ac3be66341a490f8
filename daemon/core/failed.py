"""The failed store: non-blocking items set aside as failed, retried or skipped once each.

The store is part of the state log's view (`View.failed`, by message id).
Retry and skip are check-and-set (docs/parking.md, "The failed store"):

1. `unfail` names the failure (`fid`) and the operation (`op`); the fold moves
   the item out of the store only if that failure is still there, and
   remembers whose record did it;
2. `sync()`: only the operation whose record won goes on (a double click,
   two admins, or two replicas acting on one control message do one thing);
3. the item is published again (to the non-blocking exchange with a fresh
   retry budget) or archived, with a publisher confirm;
4. `released` ends the move.

A replica that dies between 1 and 4 leaves the move *pending*; the leader
finishes pending moves older than `REDRIVE_AFTER_S` (at-least-once: the
item may run twice after such a crash, never zero times).
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import structlog

from common.clock import age_s, utcnow
from daemon.broker.errors import CHANNEL_ERRORS
from daemon.broker.topology import Topology
from daemon.core.outcomes import Outcomes
from daemon.core.parking import OperationError, UnknownClient
from daemon.core.records import Failed, Released, Unfailed
from daemon.core.state import StateLog
from daemon.core.view import FailedEntry, Pending

log = structlog.get_logger()

GENERATION = "x-s2s-generation"  # on a copy a retry sent: the failure it was sent for
REDRIVE_AFTER_S = 30.0
REDRIVE_EVERY_S = 10.0

Publish = Callable[..., Awaitable[None]]


class UnknownItem(UnknownClient):
    """Raised when an action names a failed item that does not exist (HTTP 404)."""


def rebuild(record: Failed, generation: str | None = None) -> aio_pika.Message:
    """A fresh message (fresh retry budget) from a failed record.

    `generation` names the copy: a copy that a retry sends carries the failure it
    was sent for, so the old copy, redelivered after a lost ack, is still told
    apart (`daemon.core.nonblocking`, "already failed").
    """
    stored = record.message
    if stored is None:
        raise OperationError(f"the body of failed item {record.message_id!r} is no longer"
                             " in the state log (its record aged out); it cannot run again")
    raw = stored.body
    body = base64.b64decode(raw) if stored.body_encoding == "base64" else raw.encode()
    headers: dict[str, Any] = dict(stored.headers)
    if generation:
        headers[GENERATION] = generation
    return aio_pika.Message(
        body, content_type=stored.content_type, message_id=record.message_id,
        type=record.type, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def describe(address: str, record: Failed) -> dict[str, Any]:
    """One failed item as the API lists it (SPEC section 8, plus `errors`)."""
    return {"message_id": address, "client_id": record.client_id, "type": record.type,
            "error": record.error, "attempts": record.attempts, "failed_at": record.failed_at,
            "payload": record.payload, "errors": record.errors}


class FailedStore:
    """Lists failed items and moves them out of the store, once each."""

    def __init__(self, state: StateLog, topo: Topology, publish: Publish, outcomes: Outcomes,
                 replica: str) -> None:
        self._state = state
        self._topo = topo
        self._publish = publish
        self._outcomes = outcomes
        self._replica = replica
        self._moving: set[str] = set()  # ops this replica is finishing now

    def items(self, client_id: str | None = None) -> list[dict[str, Any]]:
        """Failed items, oldest first."""
        entries = sorted(self._state.view.failed.items(), key=lambda kv: kv[1].record.failed_at)
        return [describe(address, entry.record) for address, entry in entries
                if client_id is None or entry.record.client_id == client_id]

    def get(self, address: str) -> Failed | None:
        entry = self._state.view.failed.get(address)
        return None if entry is None else entry.record

    def _entry(self, address: str | None) -> FailedEntry:
        if not address:
            raise OperationError("a message_id is required")
        entry = self._state.view.failed.get(address)
        if entry is None:
            raise UnknownItem(f"no failed item with message_id {address!r}")
        return entry

    async def retry(self, address: str | None, *, actor: str, op: str | None = None,
                    **_: Any) -> dict[str, Any]:
        """Put a failed item back on the non-blocking queue with a fresh retry budget."""
        entry = self._entry(address)
        rebuild(entry.record)  # refuses an item whose body is gone, before anything changes
        return await self._move(str(address), entry, "retry", actor, None, op)

    async def skip(self, address: str | None, *, actor: str, reason: str | None = None,
                   op: str | None = None, **_: Any) -> dict[str, Any]:
        """Archive a failed item with who skipped it and why."""
        return await self._move(str(address), self._entry(address), "skip", actor, reason, op)

    async def _move(self, address: str, entry: FailedEntry, how: str, actor: str,
                    reason: str | None, op: str | None) -> dict[str, Any]:
        record = entry.record
        op = op or uuid.uuid4().hex
        await self._state.append_and_read(Unfailed(
            message_id=address, fid=record.fid, client_id=record.client_id, how=how,
            actor=actor, reason=reason, op=op))
        winner = self._state.view.ops.get(op)
        if winner is None:
            raise UnknownItem(f"no failed item with message_id {address!r}"
                              " (it was retried or skipped meanwhile)")
        if winner == self._replica:
            pending = self._state.view.pending.get(op)
            if pending is not None:
                await self._finish(pending)
        return {"message_id": address, "client_id": record.client_id}

    async def _finish(self, pending: Pending) -> None:
        """Publish the item again or archive it, then end the move (`released`)."""
        if pending.op in self._moving:
            return
        self._moving.add(pending.op)
        try:
            record = pending.entry.record
            if pending.how == "retry":
                await self._publish(rebuild(record, generation=record.fid),
                                    routing_key=record.client_id,
                                    exchange=self._topo.nonblocking)
                log.info("failed.retried", client_id=record.client_id,
                         message_id=record.message_id, actor=pending.actor)
            else:
                await self._archive(pending)
                await self._outcomes.skipped(record.client_id, record.message_id, record.type,
                                             "nonblocking", pending.actor, pending.reason)
            await self._state.append(Released(message_id=record.message_id, op=pending.op))
        finally:
            self._moving.discard(pending.op)

    async def _archive(self, pending: Pending) -> None:
        record = pending.entry.record
        try:
            archived = rebuild(record)
        except OperationError:  # the body aged out: archive what is known of it
            archived = aio_pika.Message(b"", message_id=record.message_id, type=record.type,
                                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        archived.headers.update({"x-s2s-skipped-by": pending.actor,
                                 "x-s2s-skip-reason": pending.reason or "",
                                 "x-s2s-skipped-at": utcnow(), "x-s2s-error": record.error,
                                 "x-s2s-queue": "nonblocking"})
        await self._publish(archived, routing_key=self._topo.archive)

    async def redrive(self) -> int:
        """Finish pending moves older than REDRIVE_AFTER_S (their replica died mid-way).

        Reads the log up to now first: a move whose `released` this view has not
        read yet would otherwise be published a second time.
        """
        await self._state.sync()
        stale = [p for p in list(self._state.view.pending.values())
                 if age_s(p.at) >= REDRIVE_AFTER_S and p.op not in self._moving]
        for pending in stale:
            log.warning("failed.redrive", message_id=pending.entry.record.message_id,
                        op=pending.op, how=pending.how, replica=pending.replica)
            try:
                await self._finish(pending)
            except OperationError as exc:  # no body left to publish: archive the record
                log.error("failed.redrive_impossible", op=pending.op, error=str(exc))
                await self._state.append(Released(message_id=pending.entry.record.message_id,
                                                  op=pending.op))
        return len(stale)

    async def run_redrive(self, is_leader: Callable[[], bool]) -> None:
        """Forever: the leader finishes stale pending moves every REDRIVE_EVERY_S seconds."""
        while True:
            await asyncio.sleep(REDRIVE_EVERY_S)
            if not is_leader():
                continue
            try:
                await self.redrive()
            except CHANNEL_ERRORS as exc:
                log.warning("failed.redrive_failed", error=repr(exc))
