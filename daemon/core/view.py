"""The view: what the state log says now, as one pure fold of its records.

Every replica applies every record in stream-offset order with `View.apply`,
so two replicas that have read up to the same offset have equal views, and a
view rebuilt from a snapshot equals the one folded from the whole log
(`to_entries` / `from_entries`, checked by property tests). What each record
does is in docs/parking.md; the two rules that keep it exact:

* **Fences.** `epoch[client]` counts the client's `claim` records. A `park` or
  `unpark` written under another epoch comes from a replica that has lost the
  item since, and is ignored.
* **Check-and-set.** `register`, `pause`, `resume` and `unfail` apply only if
  their precondition still holds; the fold remembers which replica's record
  did (`ops`), so the operation that wrote it knows whether it won.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, assert_never

from daemon.core.notify_rules import fold as fold_notify
from daemon.core.records import (
    Announced,
    Audited,
    Claimed,
    DigestAdded,
    DigestSent,
    Failed,
    Marker,
    Notified,
    Parked,
    Paused,
    Record,
    Redelivered,
    Registered,
    Released,
    Resumed,
    Scope,
    SnapshotPart,
    Unfailed,
    Unparked,
    as_dict,
    decode,
    digest_of,
)

MAX_OPS = 10_000
"""Admin operations remembered (which replica's record won), newest kept."""

MAX_COPIES = 100_000
"""Non-blocking items whose copies are remembered (claim counts, generations failed)."""

MAX_AUDIT = 10_000
"""Audit entries kept (the newest; the oldest is dropped). Snapshots carry them whole."""

LOST_BODY = "its record was deleted by the state log's retention before start-up read it"
LEFT_UNFINISHED = "the item left the queue without finishing"

Identity = tuple[str | None, str]
"""An item's message id and body digest: which delivery a park or a `done` is about."""


def same_item(park: Parked, message_id: str | None, digest: str) -> bool:
    """Whether a park is about this item (records of release 1 carry no digest)."""
    if park.message_id != message_id:
        return False
    return not park.digest or not digest or park.digest == digest


@dataclass(slots=True)
class FailedEntry:
    """A failed item in the store, and the offset of the record that holds its body."""

    record: Failed
    offset: int


@dataclass(slots=True)
class Pending:
    """A failed item an admin moved out of the store whose move is not confirmed yet."""

    entry: FailedEntry
    how: str
    actor: str
    reason: str | None
    op: str
    replica: str
    at: str


@dataclass(slots=True)
class View:
    """Registered clients, parks, pauses, the failed store, notification memory and the
    audit trail."""

    clients: set[str] = field(default_factory=set)
    parked: dict[Scope, Parked] = field(default_factory=dict)
    paused: dict[str, Paused] = field(default_factory=dict)
    failed: dict[str, FailedEntry] = field(default_factory=dict)  # by address (the message id)
    pending: dict[str, Pending] = field(default_factory=dict)  # by op
    notify: dict[str, dict[str, Any]] = field(default_factory=dict)  # daemon.core.notify_rules
    epochs: dict[Scope, int] = field(default_factory=dict)
    claims: dict[Scope, Identity] = field(default_factory=dict)  # last redelivered head
    claim_ids: dict[Scope, str] = field(default_factory=dict)  # ...and the id of its claim
    done: dict[Scope, Identity] = field(default_factory=dict)  # last item released
    ops: dict[str, str] = field(default_factory=dict)  # op -> replica whose record did it
    fids: dict[str, tuple[str, str]] = field(default_factory=dict)  # fid -> (failed|pending, key)
    copies: dict[str, tuple[int, str]] = field(default_factory=dict)  # message id -> claims, last
    spent: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    """(message id, generation) of every copy that failed -> (fid, body digest)."""
    audit: deque[tuple[int, Audited]] = field(default_factory=lambda: deque(maxlen=MAX_AUDIT))
    """The latest admin actions, oldest first, with their offsets (never read to decide)."""

    def epoch(self, scope: Scope) -> int:
        return self.epochs.get(scope, 0)

    def open_claim(self, scope: Scope) -> Identity | None:
        """The last redelivered head item of `scope` if it never finished (no `unpark` yet)."""
        claim = self.claims.get(scope)
        if claim is None or claim == self.done.get(scope):
            return None
        return claim

    def apply(self, record: Record, offset: int) -> None:
        """Fold one record, read at `offset`, into the view."""
        match record:
            case Registered() | Claimed() | Parked() | Announced() | Unparked():
                self._apply_head(record)
            case Paused() | Resumed():
                self._apply_flow(record)
            case Failed():
                self._failed(record, offset)
            case Redelivered():
                self._redelivered(record)
            case Unfailed():
                self._unfailed(record)
            case Released(op=op):
                pending = self.pending.pop(op, None)
                if pending is not None:
                    self.fids.pop(pending.entry.record.fid, None)
            case Notified() | DigestAdded() | DigestSent():
                fold_notify(self.notify, as_dict(record))
            case Audited():
                self.audit.append((offset, record))
            case Marker() | SnapshotPart():
                pass
            case _:
                assert_never(record)

    # -- a client's head -------------------------------------------------------

    def _apply_head(self, record: Registered | Claimed | Parked | Announced | Unparked) -> None:
        match record:
            case Registered(client_id=client):
                if client not in self.clients and record.op not in self.ops:
                    self.clients.add(client)
                    self._did(record.op, record.replica)
            case Claimed(client_id=scope):
                self._claimed(scope, record)
            case Parked(client_id=scope):
                if self._current(scope, record.epoch):
                    self.clients.add(scope)
                    self.parked[scope] = replace(record, announced=False)
            case Announced(client_id=scope):
                park = self.parked.get(scope)
                if park is not None and (park.message_id, park.failed_at) == (
                        record.message_id, record.failed_at):
                    self.parked[scope] = replace(park, announced=True)
            case Unparked(client_id=scope):
                self._unparked(scope, record)
            case _:
                assert_never(record)

    def _apply_flow(self, record: Paused | Resumed) -> None:
        """Pause and resume are check-and-set: a second pause (or resume) changes nothing."""
        client = record.client_id
        if record.op and record.op in self.ops:
            return  # the same operation again (a duplicate): it acts once
        if isinstance(record, Paused) and client not in self.paused:
            self.paused[client] = record
        elif isinstance(record, Resumed) and client in self.paused:
            del self.paused[client]
        else:
            return
        self._did(record.op, record.replica)

    def _current(self, scope: Scope, epoch: int | None) -> bool:
        """A fenced record counts only under the epoch it was written in."""
        return epoch is None or epoch == self.epochs.get(scope, 0)

    def _claimed(self, scope: Scope, record: Claimed) -> None:
        if record.seen is not None and record.seen != self.epochs.get(scope, 0):
            return  # its writer read an older epoch: it has lost the item since
        epoch = self.epochs.get(scope, 0) + 1
        self.epochs[scope] = epoch
        unfinished = self.open_claim(scope)
        self.claims[scope] = (record.message_id, record.digest)
        if record.claim:
            self.claim_ids[scope] = record.claim
        park = self.parked.get(scope)
        if park is not None and same_item(park, record.message_id, record.digest):
            self.parked[scope] = replace(park, epoch=epoch)  # the new holder adopts the park
        elif park is None and unfinished not in (None, self.claims[scope]):
            # Another item is claimed while the last one never finished: that one left
            # the queue (dead-lettered at the delivery limit). The client stays parked on it
            # (the holder writes the park out in full; docs/parking.md, step 4).
            message_id, digest = unfinished
            self.parked[scope] = Parked(client_id=scope, message_id=message_id, digest=digest,
                                        epoch=epoch, gone=True, error=LEFT_UNFINISHED)

    def _unparked(self, scope: Scope, record: Unparked) -> None:
        """The holder released its item: a retry succeeded, a skip, or a redelivered run done."""
        if not self._current(scope, record.epoch):
            return
        park = self.parked.get(scope)
        digest = record.digest
        if park is not None:
            if not same_item(park, record.message_id, record.digest):
                return  # names another item than the parked one
            del self.parked[scope]
            digest = digest or park.digest
        elif record.epoch is None:
            return  # release 1 wrote unparks only of parks
        self.done[scope] = (record.message_id, digest)
        self._did(record.op, "")

    # -- the failed store --------------------------------------------------------

    def _failed(self, record: Failed, offset: int) -> None:
        if not record.fid:  # release 1 wrote no failure id: the offset is one
            record = replace(record, fid=f"o{offset}")
        entry = FailedEntry(record, offset)
        where = self.fids.get(record.fid)
        if where is not None:  # the same failure written again (carried): its body moved
            kind, key = where
            if kind == "failed":
                self.failed[key] = entry
            else:
                self.pending[key] = replace(self.pending[key], entry=entry)
            return
        if record.count is not None and record.count != self.copy_count(record.message_id):
            return  # its writer lost that copy since: another replica claimed it
        address = record.message_id
        if address in self.failed:  # another item with the same message id: keep both
            address = f"{record.message_id}~{record.fid[:12]}"
        self.failed[address] = entry
        self.fids[record.fid] = ("failed", address)
        digest = digest_of_stored(record)
        _remember(self.spent, (record.message_id, record.generation), (record.fid, digest))

    def copy_count(self, message_id: str) -> int:
        """How many times copies of this non-blocking item were claimed after a redelivery."""
        known = self.copies.get(message_id)
        return 0 if known is None else known[0]

    def _redelivered(self, record: Redelivered) -> None:
        count = self.copy_count(record.message_id)
        if record.seen != count:
            return  # its writer read an older count: a claim came first
        _remember(self.copies, record.message_id, (count + 1, record.claim))

    def _unfailed(self, record: Unfailed) -> None:
        if record.op and record.op in self.ops:
            return
        entry = self.failed.get(record.message_id)
        if entry is None or (record.fid and entry.record.fid != record.fid):
            return
        del self.failed[record.message_id]
        del self.fids[entry.record.fid]
        if not record.op:  # release 1 published the item before writing the record
            return
        self.pending[record.op] = Pending(entry, record.how, record.actor, record.reason,
                                          record.op, record.replica, record.at)
        self.fids[entry.record.fid] = ("pending", record.op)
        self._did(record.op, record.replica)

    def _did(self, op: str, replica: str) -> None:
        if not op:
            return
        self.ops[op] = replica
        if len(self.ops) > MAX_OPS:
            del self.ops[next(iter(self.ops))]

    # -- snapshots ----------------------------------------------------------------

    def body_offsets(self) -> list[int]:
        """Offsets of the records that hold failed items' bodies (a snapshot names them)."""
        return [e.offset for e in self.failed.values()] + [
            p.entry.offset for p in self.pending.values()]

    def to_entries(self) -> Iterator[list[Any]]:
        """The view as small JSON entries; bodies of failed items only by offset."""
        for client in sorted(self.clients):
            yield ["client", client]
        for park in self.parked.values():
            yield ["park", as_dict(park)]
        for pause in self.paused.values():
            yield ["pause", as_dict(pause)]
        for address, entry in self.failed.items():
            r = entry.record
            yield ["failed", address, entry.offset, r.fid, r.message_id, r.client_id, r.type,
                   r.failed_at]
        for op, p in self.pending.items():
            r = p.entry.record
            yield ["pending", op, p.entry.offset, r.fid, r.message_id, r.client_id, r.type,
                   r.failed_at, p.how, p.actor, p.reason, p.replica, p.at]
        for client, memory in self.notify.items():
            yield ["notify", client, memory]
        for scope, epoch in self.epochs.items():
            yield ["epoch", scope, epoch]
        for scope, (message_id, digest) in self.claims.items():
            yield ["claim", scope, message_id, digest, self.claim_ids.get(scope, "")]
        for scope, (message_id, digest) in self.done.items():
            yield ["done", scope, message_id, digest]
        yield from self._memory_entries()

    def _memory_entries(self) -> Iterator[list[Any]]:
        """What the view remembers of past operations, copies and admin actions."""
        for op, replica in self.ops.items():
            yield ["op", op, replica]
        for message_id, (count, claim) in self.copies.items():
            yield ["copy", message_id, count, claim]
        for (message_id, generation), (fid, digest) in self.spent.items():
            yield ["spent", message_id, generation, fid, digest]
        for offset, audited in self.audit:  # whole: small, and start-up reads no further back
            yield ["audit", offset, as_dict(audited)]

    @classmethod
    def from_entries(cls, entries: list[list[Any]], bodies: Mapping[int, Failed]) -> View:
        """The view a snapshot describes; `bodies` holds the `failed` records it names."""
        view = cls()
        for entry in entries:
            view._restore(entry, bodies)
        return view

    def _restore(self, entry: list[Any], bodies: Mapping[int, Failed]) -> None:
        match entry:
            case ["client", str(client)]:
                self.clients.add(client)
            case ["park", dict(data)]:
                park = decode({**data, "kind": "park"})
                if isinstance(park, Parked):
                    self.parked[park.client_id] = park
            case ["pause", dict(data)]:
                pause = decode({**data, "kind": "pause"})
                if isinstance(pause, Paused):
                    self.paused[pause.client_id] = pause
            case ["failed" | "pending", *_]:
                self._restore_failed(entry, bodies)
            case ["notify", str(client), dict(memory)]:
                self.notify[client] = memory
            case ["audit", int(offset), dict(data)]:
                audited = decode({**data, "kind": "audit"})
                if isinstance(audited, Audited):
                    self.audit.append((offset, audited))
            case _:
                self._restore_head(entry)

    def _restore_failed(self, entry: list[Any], bodies: Mapping[int, Failed]) -> None:
        match entry:
            case ["failed", str(address), int(offset), str(fid), *meta]:
                self.failed[address] = FailedEntry(_body(bodies, offset, fid, meta), offset)
                self.fids[fid] = ("failed", address)
            case ["pending", str(op), int(offset), str(fid), m, c, t, f, how, actor, reason,
                  replica, at]:
                record = _body(bodies, offset, fid, [m, c, t, f])
                self.pending[op] = Pending(FailedEntry(record, offset), how, actor, reason, op,
                                           replica, at)
                self.fids[fid] = ("pending", op)

    def _restore_head(self, entry: list[Any]) -> None:
        match entry:
            case ["epoch", str(scope), int(epoch)]:
                self.epochs[scope] = epoch
            case ["claim", str(scope), message_id, str(digest), str(claim)]:
                self.claims[scope] = (message_id, digest)
                if claim:
                    self.claim_ids[scope] = claim
            case ["done", str(scope), message_id, str(digest)]:
                self.done[scope] = (message_id, digest)
            case ["op", str(op), str(replica)]:
                self.ops[op] = replica
            case ["copy", str(message_id), int(count), str(claim)]:
                self.copies[message_id] = (count, claim)
            case ["spent", str(message_id), str(generation), str(fid), str(digest)]:
                self.spent[(message_id, generation)] = (fid, digest)


def _remember(memory: dict[Any, Any], key: Any, value: Any) -> None:
    """Set `memory[key]`, newest last, forgetting the oldest past MAX_COPIES."""
    memory.pop(key, None)
    memory[key] = value
    if len(memory) > MAX_COPIES:
        del memory[next(iter(memory))]


def digest_of_stored(record: Failed) -> str:
    """The body digest of a failed record's message (what a redelivered copy is told by)."""
    stored = record.message
    if stored is None:
        return ""
    body = (base64.b64decode(stored.body) if stored.body_encoding == "base64"
            else stored.body.encode("utf-8", "surrogatepass"))
    return digest_of(body)


def _body(bodies: Mapping[int, Failed], offset: int, fid: str, meta: list[Any]) -> Failed:
    """The failed record at `offset`, or what the snapshot says of it if it is gone."""
    record = bodies.get(offset)
    if record is not None:
        return record if record.fid else replace(record, fid=fid)
    message_id, client, type_, failed_at = (meta + [None] * 4)[:4]
    return Failed(message_id=str(message_id or ""), fid=fid, client_id=str(client or ""),
                  type=type_ if isinstance(type_, str) else None,
                  failed_at=str(failed_at or ""), error=LOST_BODY)
