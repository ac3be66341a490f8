"""The admin operations, shared by control messages, the HTTP API and the CLI.

Every face calls these and nothing else, so an action means the same
wherever it comes from. Each returns the fields of a successful answer, or
raises `OperationError` (`UnknownClient` for a client that is not
registered) with a readable reason; nothing changes when it raises.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aio_pika.abc import AbstractRobustConnection

from common.clients import InvalidClientId, validate_client_id
from daemon.broker.depths import DepthCache, queue_depths
from daemon.broker.producer import NoAnswer, send_control
from daemon.core.blocking import BlockingConsumer
from daemon.core.failed import FailedStore, UnknownItem
from daemon.core.history import HistoryIndex
from daemon.core.outcomes import Outcomes
from daemon.core.parking import OperationError, UnknownClient
from daemon.core.records import Audited, Failed, Paused, Resumed
from daemon.core.runtime import Runtime
from daemon.core.unrouted import UNROUTED_LIMIT, list_unrouted, replay_unrouted
from daemon.operations.audit import AuditQuery, audit_page
from daemon.operations.groups import Group, Kind, Member, UnknownGroup, find, group, item_ids
from daemon.operations.history import HistoryQuery
from daemon.operations.listing import ClientsQuery, page_after

Register = Callable[[str, str, str | None], Awaitable[bool]]
"""Start consuming a client's queue and record it (client_id, actor, op): True if new."""

log = structlog.get_logger()

GROUP_CONCURRENCY = 16  # items of a group retried or skipped at once
AUDIT_PATIENCE = 10.0  # an audit record waits this long for a lost broker, then is given up
__all__ = ["HolderRefused", "HolderSilent", "OperationError", "Operations", "UnknownClient",
           "UnknownGroup", "UnknownItem"]


class HolderSilent(OperationError):
    """Raised when the replica holding a client's park did not answer a forwarded action."""


class HolderRefused(OperationError):
    """Raised when the replica holding a client's park refused a forwarded action (it
    audited the refusal)."""


class Operations:
    """Admin actions on the clients and queues this daemon serves.

    Every action that changes the state log is check-and-set under an op id
    (a control message's correlation id, or a fresh one): its side effects
    follow only if its own record won (docs/parking.md, "Operations").
    """

    def __init__(self, rt: Runtime, *, consumers: Mapping[str, BlockingConsumer],
                 failed: FailedStore, outcomes: Outcomes, depth_cache: DepthCache,
                 connection: AbstractRobustConnection, register: Register,
                 history: HistoryIndex | None = None) -> None:
        self._rt = rt
        self._history = history  # None: S2SQ_HISTORY is off
        self._consumers = consumers  # the supervisor's: it adds a client's as it starts
        self._store = failed
        self._outcomes = outcomes
        self._depth_cache = depth_cache
        self._connection = connection
        self._register = register
        self._unrouted_lock = asyncio.Lock()
        self._ids: list[str] = []  # sorted client ids (`_ordered`)

    # -- clients -------------------------------------------------------------

    async def register(self, client_id: str, actor: str, op: str | None = None,
                       **_: Any) -> dict[str, Any]:
        """Create the client's queue (idempotent) and start consuming it."""
        try:
            validate_client_id(client_id)
        except InvalidClientId as exc:
            raise OperationError(str(exc)) from None
        created = await self._register(client_id, actor, op)
        return {"client_id": client_id, "created": created}

    def registered(self, client_id: str) -> bool:
        """True if the client is registered (its queue consumed here)."""
        return client_id in self._consumers

    def client_count(self) -> int:
        """How many clients are registered."""
        return len(self._consumers)

    def _consumer(self, client_id: str) -> BlockingConsumer:
        consumer = self._consumers.get(client_id)
        if consumer is None:
            raise UnknownClient(f"client {client_id!r} is not registered")
        return consumer

    def history(self, client_id: str, query: HistoryQuery) -> dict[str, Any]:
        """A page of what ran for the client, newest first (daemon/core/history.py)."""
        self._consumer(client_id)
        if self._history is None:
            raise OperationError("the history of what ran is off on this daemon"
                                 " (S2SQ_HISTORY=false)")
        items, after = self._history.page(client_id, query.limit, query.before)
        return {"items": items, "next": after}

    def holds_park(self, client_id: str) -> bool:
        """True if this replica holds the client's parked item."""
        consumer = self._consumers.get(client_id)
        return consumer is not None and consumer.parking.holds_park

    def parked_anywhere(self, client_id: str) -> bool:
        """True if the state log says the client is parked (on any replica)."""
        return client_id in self._rt.state.view.parked

    def forwards(self, client_id: str) -> bool:
        """True if a retry or skip of the client goes to another replica (it holds the park)."""
        return (client_id in self._consumers and not self.holds_park(client_id)
                and self.parked_anywhere(client_id))

    async def sync(self) -> None:
        """Read the state log up to now."""
        await self._rt.state.sync()

    async def retry(
        self, client_id: str, *, actor: str, message_id: str | None = None,
        reason: str | None = None, forward: bool = True, via: str = "control", **_: Any,
    ) -> dict[str, Any]:
        """Run the parked item once now (SPEC section 4, point 5)."""
        return (await self._on_park("retry", client_id, actor, message_id, reason, forward,
                                    via))[0]

    async def skip(
        self, client_id: str, *, actor: str, message_id: str | None = None,
        reason: str | None = None, forward: bool = True, via: str = "control", **_: Any,
    ) -> dict[str, Any]:
        """Archive the parked item without running it, and resume the client."""
        return (await self._on_park("skip", client_id, actor, message_id, reason, forward,
                                    via))[0]

    async def _on_park(
        self, how: str, client_id: str, actor: str, message_id: str | None,
        reason: str | None, forward: bool, via: str,
    ) -> tuple[dict[str, Any], bool]:
        """Retry or skip the client's parked item here, or (`forward`) ask the replica that
        holds it: the answer, and whether it was forwarded."""
        consumer = self._consumer(client_id)
        if forward and self.forwards(client_id):
            return await self._forward(how, client_id, actor, message_id, reason, via), True
        act = consumer.parking.retry if how == "retry" else consumer.parking.skip
        return await act(message_id or None, actor, reason), False

    async def _forward(
        self, action: str, client_id: str, actor: str, message_id: str | None,
        reason: str | None, via: str,
    ) -> dict[str, Any]:
        """Another replica holds the parked item: ask it through a control message (it
        audits the action, under the face that asked here)."""
        request = {"action": action, "client_id": client_id, "actor": actor,
                   "message_id": message_id, "reason": reason, "via": via, "forwarded": True}
        timeout = 10.0 + self._rt.settings.handler_timeout
        try:
            answer = await send_control(self._connection, self._rt.topo,
                                        {k: v for k, v in request.items() if v is not None},
                                        timeout)
        except NoAnswer:
            raise HolderSilent(
                f"client {client_id!r} is parked, but the replica holding it did not answer"
            ) from None
        if not answer.pop("ok", False):
            raise HolderRefused(str(answer.get("error", "refused")))
        return answer

    async def _won(self, record: Paused | Resumed) -> bool:
        """Write a check-and-set record and read it back: True if this replica's record won.

        Raises OperationError if another operation's record changed it first.
        """
        state = self._rt.state
        await state.append_and_read(record)
        winner = state.view.ops.get(record.op)
        if winner is None:
            what = "already paused" if isinstance(record, Paused) else "not paused"
            raise OperationError(f"client {record.client_id!r} is {what}")
        return winner == self._rt.replica

    async def pause(self, client_id: str, *, actor: str, op: str | None = None,
                    **_: Any) -> dict[str, Any]:
        """Stop the client after its current item (durable, like a park)."""
        consumer = self._consumer(client_id)
        if consumer.paused:
            raise OperationError(f"client {client_id!r} is already paused")
        if await self._won(Paused(client_id=client_id, actor=actor, op=op or uuid.uuid4().hex)):
            await self._outcomes.paused(client_id, actor)
        return {"client_id": client_id, "state": "paused"}

    async def resume(self, client_id: str, *, actor: str, op: str | None = None,
                     **_: Any) -> dict[str, Any]:
        """Undo a pause; the item held meanwhile runs now."""
        consumer = self._consumer(client_id)
        if not consumer.paused:
            raise OperationError(f"client {client_id!r} is not paused")
        if await self._won(Resumed(client_id=client_id, actor=actor, op=op or uuid.uuid4().hex)):
            outcomes = self._outcomes  # after the answer, in the client's order of reports
            consumer.parking.report_after(lambda: outcomes.resumed(client_id, None, "resume",
                                                                   actor))
        return {"client_id": client_id, "state": consumer.state}

    async def resume_all(self, client_ids: Sequence[str], *, actor: str,
                         op: str | None = None) -> dict[str, Any]:
        """Resume each of the clients, in order: what happened to each (one pause each)."""
        if not client_ids:
            raise OperationError("resume_all needs client_ids")
        results: list[dict[str, Any]] = []
        for client_id in client_ids:
            try:
                done = await self.resume(client_id, actor=actor,
                                         op=op and f"{op}:{client_id}")
                results.append({"client_id": client_id, "ok": True, "state": done["state"]})
            except OperationError as exc:
                results.append({"client_id": client_id, "ok": False, "error": str(exc)})
        return {"results": results}

    async def client(self, client_id: str) -> dict[str, Any]:
        """One client as SPEC section 8 shows it, its depth read live (one passive declare)."""
        self._consumer(client_id)
        queue = self._rt.topo.client_queue(client_id)
        depths = await queue_depths(self._connection, [queue])
        return self._describe(client_id, depths.get(queue))

    def clients(self) -> list[dict[str, Any]]:
        """Every registered client, sorted by id, depths as the last walk found them."""
        cache = self._depth_cache
        return [self._describe(c, cache.get(c)) for c in self._ordered()]

    def clients_page(self, query: ClientsQuery, only: str | None = None) -> dict[str, Any]:
        """One page of clients by id (SPEC section 9): `{"clients", "next"}`.

        `only`: a client's own listing (its console token), whatever the others are.
        Depths come from the depth cache: no queue is asked for a listing.
        """
        state, cache = query.state, self._depth_cache
        ids, cursor = page_after(self._candidates(state, only), query.after, query.limit,
                                 lambda c: state is None or self.state_of(c) == state)
        return {"clients": [self._describe(c, cache.get(c)) for c in ids], "next": cursor}

    def client_counts(self, only: str | None = None) -> dict[str, int]:
        """How many clients are in each state, and in all (the console's tabs), from the
        state log's few parked and paused: no walk over every client."""
        total = len(self._candidates(None, only)) if only else len(self._consumers)
        parked = len(self._candidates("parked", only))
        paused = len(self._candidates("paused", only))
        return {"parked": parked, "paused": paused, "running": total - parked - paused,
                "all": total}

    def state_of(self, client_id: str) -> str:
        """parked, paused or running, as the state log says (a park outranks a pause)."""
        view = self._rt.state.view
        return ("parked" if client_id in view.parked else
                "paused" if client_id in view.paused else "running")

    def _candidates(self, state: str | None, only: str | None) -> list[str]:
        """Sorted ids a page is read from: the few parked or paused, else everyone."""
        consumers, view = self._consumers, self._rt.state.view
        if only is not None:
            mine = [only] if only in consumers else []
            return [c for c in mine if state is None or self.state_of(c) == state]
        if state == "parked":
            return sorted(c for c in view.parked if c in consumers)
        if state == "paused":
            return sorted(c for c in view.paused if c in consumers and c not in view.parked)
        return self._ordered()

    def _ordered(self) -> list[str]:
        """Every registered client's id, sorted again only when one was added."""
        consumers = self._consumers
        if len(self._ids) != len(consumers):  # clients are added, never removed
            self._ids = sorted(consumers)
        return self._ids

    async def status(self, client_id: str | None = None) -> dict[str, Any]:
        """The `status` control action: one client, or all of them (depths from the cache)."""
        if client_id:
            return {"client": await self.client(client_id)}
        return {"clients": self.clients()}

    def _describe(self, client_id: str, depth: int | None) -> dict[str, Any]:
        """A client as the state log shows it, so every replica answers alike."""
        view = self._rt.state.view
        parked = view.parked.get(client_id)
        paused = client_id in view.paused
        return {
            "client_id": client_id,
            "state": "parked" if parked else "paused" if paused else "running",
            "paused": paused,
            "depth": depth,
            "parked": None if parked is None else {
                "message_id": parked.message_id, "type": parked.type, "error": parked.error,
                "attempts": parked.attempts, "since": parked.since, "payload": parked.payload,
            },
        }

    # -- the audit trail ----------------------------------------------------------------

    async def audit(self, entries: Sequence[Audited]) -> None:
        """Append audit records (no read-back): an action's outcome stands even if this fails."""
        state = self._rt.state
        try:
            for entry in entries:
                await state.append(entry, patience=AUDIT_PATIENCE)
        except Exception as exc:  # the action is done; say the record is missing, once
            log.warning("audit.append_failed", action=entries[0].action if entries else None,
                        error=repr(exc))

    def audit_page(self, query: AuditQuery) -> dict[str, Any]:
        """A page of the audit trail, newest first (`{"entries", "next"}`); entries older
        than the state log's retention are left out, so every replica lists alike."""
        retention = timedelta(seconds=self._rt.settings.state_retention)
        since = (datetime.now(UTC) - retention).isoformat(timespec="milliseconds")
        return audit_page(self._rt.state.view.audit, query, since.replace("+00:00", "Z"))

    # -- failed non-blocking items ----------------------------------------------------

    def failed(self, client_id: str | None = None) -> list[dict[str, Any]]:
        """Failed non-blocking items, oldest first (SPEC section 8 shape plus `errors`)."""
        return self._store.items(client_id)

    async def failed_listing(self, client_id: str | None = None) -> dict[str, Any]:
        """The `list_failed` action: `{"items": [...]}`, as `failed` lists them."""
        return {"items": self.failed(client_id)}

    def failed_item(self, message_id: str) -> Failed | None:
        return self._store.get(message_id)

    async def retry_failed(self, message_id: str | None, *, actor: str, op: str | None = None,
                           **_: Any) -> dict[str, Any]:
        """Put a failed item back on the non-blocking queue with a fresh retry budget."""
        return await self._store.retry(message_id, actor=actor, op=op)

    async def skip_failed(self, message_id: str | None, *, actor: str,
                          reason: str | None = None, op: str | None = None,
                          **_: Any) -> dict[str, Any]:
        """Archive a failed item with who skipped it and why."""
        return await self._store.skip(message_id, actor=actor, reason=reason, op=op)

    # -- groups of failed items and parks (SPEC section 9) -----------------------------

    def groups(self, kind: Kind, client_id: str | None = None) -> list[Group]:
        """Failed items, or parked clients' items, grouped by type and error pattern."""
        if kind == "failed":
            members = (Member(r.client_id, r.message_id, r.type or "", r.error, r.failed_at,
                              item_ids(r.payload))
                       for r in (e.record for e in self._rt.state.view.failed.values())
                       if client_id is None or r.client_id == client_id)
        else:
            parked = self._rt.state.view.parked
            members = (Member(c, p.message_id or "", p.type or "", p.error, p.since,
                              item_ids(p.payload))
                       for c, p in ((c, parked[c]) for c in self._candidates("parked",
                                                                             client_id)))
        return group(kind, members)

    async def group_listing(self, kind: Kind, client_id: str | None = None) -> dict[str, Any]:
        """The `list_*_groups` actions: every group, biggest first (no paging)."""
        return {"groups": [g.describe() for g in self.groups(kind, client_id)]}

    async def on_group(self, kind: Kind, how: str, key: str | None, *, actor: str,
                       client_id: str | None = None, reason: str | None = None,
                       op: str | None = None, via: str = "control") -> dict[str, Any]:
        """Retry or skip every item of a group (one client's, given `client_id`), up to
        GROUP_CONCURRENCY at once: `{"count", "results"}` in the group's order, oldest first.

        Each item is acted on as by itself: a park only if it is still that item
        (by message id), a failed item once (check-and-set under `op:<message_id>`).
        A park another replica holds is forwarded to it, which audits it (as
        `retry` or `skip`, under `via`): its result says `"forwarded": true`.
        """
        if not key:
            raise OperationError("a group is required")
        found = find(self.groups(kind, client_id), key)
        if found is None:
            raise UnknownGroup(f"no {kind} group {key!r}")
        slots = asyncio.Semaphore(GROUP_CONCURRENCY)

        async def one(m: Member) -> dict[str, Any]:
            done: dict[str, Any] = {"client_id": m.client_id, "message_id": m.message_id}
            async with slots:
                try:
                    result = await self._on_member(kind, how, m, actor, reason,
                                                   op and f"{op}:{m.message_id}", via)
                except HolderRefused as exc:
                    return {**done, "ok": False, "error": str(exc), "forwarded": True}
                except OperationError as exc:
                    return {**done, "ok": False, "error": str(exc)}
            return {**done, "ok": True, **{k: v for k, v in result.items()
                                           if k in ("outcome", "error", "forwarded")}}

        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(one(m)) for m in found.members]
        log.info("group.done", kind=kind, how=how, group=found.group, count=found.count,
                 actor=actor)
        return {"group": found.group, "count": found.count,
                "results": [task.result() for task in running]}

    async def _on_member(self, kind: Kind, how: str, m: Member, actor: str,
                         reason: str | None, op: str | None, via: str) -> dict[str, Any]:
        if kind == "parked":
            answer, forwarded = await self._on_park(how, m.client_id, actor,
                                                    m.message_id or None, reason, True, via)
            return {**answer, "forwarded": True} if forwarded else answer
        if how == "retry":
            return await self.retry_failed(m.message_id, actor=actor, op=op)
        return await self.skip_failed(m.message_id, actor=actor, reason=reason, op=op)

    # -- unrouted --------------------------------------------------------------

    async def unrouted(self, client_id: str | None = None,
                       limit: int = UNROUTED_LIMIT) -> dict[str, Any]:
        """The oldest blocking items published for unregistered clients (one client's, given
        `client_id`): `{"items", "more", "total"}` (daemon/core/unrouted.py)."""
        async with self._unrouted_lock:
            return await list_unrouted(self._connection, self._rt.topo, client_id, limit)

    async def replay_unrouted(self, client_id: str, *, actor: str, **_: Any) -> dict[str, Any]:
        """Append the client's unrouted items to the tail of its queue, in original order."""
        self._consumer(client_id)
        async with self._unrouted_lock:
            replayed = await replay_unrouted(self._connection, self._rt.topo,
                                             self._rt.publish_confirmed, client_id)
        log.info("unrouted.replayed", client_id=client_id, count=replayed, actor=actor)
        return {"client_id": client_id, "replayed": replayed}
