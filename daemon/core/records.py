"""The state log's records: one frozen dataclass per kind, one union, one encode/decode pair.

On the wire a record is a JSON object with `kind` and its fields, plus the
`replica` that wrote it and when (`at`) — the format of release 1, so an
existing stream replays. Fields added since have defaults: a record of
release 1 decodes with them empty, and the fold treats it as it did then
(an `epoch` of None is not fenced, a `failed` without `fid` gets one from
its offset).

`decode` never raises: a body that is not a valid record comes back as
None, and every replica skips it alike. `encode` never raises for data that
came from outside (a payload with an integer wider than 64 bits, a lone
surrogate in a string): what JSON cannot carry is written as text.

Kinds (docs/parking.md has what the fold does with each):

    register   claim   park   announced   unpark         (a client's head)
    pause      resume                                      (flow)
    failed     redelivered  unfail  released               (the failed store)
    notified   digest.add  digest.sent                     (notification memory)
    audit                                                  (the audit trail)
    marker     snapshot                                    (the log's own)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import Field, TypeAdapter, ValidationError

Scope = str
"""What one park holds up: today a client id (a later release: client and sales channel)."""

MAX_ERROR_CHARS = 4000
"""Errors are cut to this length in records: a peer's error page must not fill the log."""

MAX_DISPLAY_BYTES = 65_536
"""A payload shown with a park larger than this is kept as the start of its text."""


def digest_of(body: bytes) -> str:
    """A short fingerprint of a delivery's body: tells two items apart without a message id."""
    return hashlib.sha256(body).hexdigest()[:16]


def short_error(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[:MAX_ERROR_CHARS] + "…"


# -- a client's head ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Registered:
    """A client was registered (its queue exists)."""

    kind: Literal["register"] = "register"
    client_id: str
    actor: str = ""
    op: str = ""
    replica: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Claimed:
    """A replica received a client's head item redelivered: the epoch moves on.

    Check-and-set on `seen`, the epoch its writer read just before: a claim
    from a replica that has lost the item since (a late record) changes nothing.
    """

    kind: Literal["claim"] = "claim"
    client_id: Scope
    message_id: str | None
    digest: str = ""
    seen: int | None = None
    claim: str = ""  # this claim's id: its writer tells from it whether it won
    replica: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Parked:
    """The client is parked on this item (written by its holder, under `epoch`)."""

    kind: Literal["park"] = "park"
    client_id: Scope
    message_id: str | None
    digest: str = ""
    epoch: int | None = None
    type: str | None = None
    error: str
    attempts: int = 0
    since: str = ""
    failed_at: str = ""
    payload: Any = None
    gone: bool = False  # the item left the queue without a retry or skip
    announced: bool = False  # set by the fold when an `announced` record arrives


@dataclass(frozen=True, slots=True, kw_only=True)
class Announced:
    """The park's event and notification were queued."""

    kind: Literal["announced"] = "announced"
    client_id: Scope
    message_id: str | None
    failed_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unparked:
    """The parked item was retried successfully or skipped (written before its ack)."""

    kind: Literal["unpark"] = "unpark"
    client_id: Scope
    message_id: str | None
    digest: str = ""
    epoch: int | None = None
    how: str
    actor: str = ""
    reason: str | None = None
    op: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Paused:
    kind: Literal["pause"] = "pause"
    client_id: str
    actor: str = ""
    op: str = ""
    replica: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumed:
    kind: Literal["resume"] = "resume"
    client_id: str
    actor: str = ""
    op: str = ""
    replica: str = ""


# -- the failed store --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """What is needed to publish a failed item again."""

    body: str
    body_encoding: Literal["utf-8", "base64"] = "utf-8"
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """A non-blocking item set aside as failed, with everything to retry it.

    `fid` names this failure: an `unfail` acts only on the failure it names.
    The same record written again (carried, to stay inside the retention) has
    the same `fid`.
    """

    kind: Literal["failed"] = "failed"
    message_id: str
    fid: str = ""
    client_id: str = ""
    type: str | None = None
    error: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    failed_at: str = ""
    payload: Any = None
    message: StoredMessage | None = None
    at: str = ""
    generation: str = ""  # which copy failed: "" the producer's, else the move that sent it
    count: int | None = None  # the copy's claim count its writer held it under (a fence)


@dataclass(frozen=True, slots=True, kw_only=True)
class Redelivered:
    """A replica received a non-blocking copy redelivered: the item's claim count moves on.

    Check-and-set on `seen`, like a blocking `claim`: a `failed` record written
    under an older count (by a replica that has lost that copy since) is void.
    """

    kind: Literal["redelivered"] = "redelivered"
    message_id: str
    seen: int = 0
    claim: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Unfailed:
    """An admin moves a failed item out of the store (check-and-set on `fid`)."""

    kind: Literal["unfail"] = "unfail"
    message_id: str
    fid: str = ""
    client_id: str = ""
    how: str
    actor: str = ""
    reason: str | None = None
    op: str = ""
    replica: str = ""
    at: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Released:
    """The move an `unfail` started is done (the item was published again, or archived)."""

    kind: Literal["released"] = "released"
    message_id: str
    op: str


# -- notification memory (daemon.core.notify_rules) ----------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Notified:
    kind: Literal["notified"] = "notified"
    client_id: str
    id: str | None = None
    t: float = 0.0
    parked_mail: float | None = None
    window_until: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestAdded:
    kind: Literal["digest.add"] = "digest.add"
    client_id: str
    id: str | None = None
    t: float = 0.0
    entry: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestSent:
    kind: Literal["digest.sent"] = "digest.sent"
    client_id: str
    id: str | None = None
    t: float = 0.0
    window_until: float | None = None


# -- the audit trail ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Audited:
    """An admin action and its outcome, written after it ran: who, which face, what, why.

    An announcement only: nothing reads it to decide anything (docs/parking.md).
    `at` is the envelope's: when the record was appended.
    """

    kind: Literal["audit"] = "audit"
    at: str = ""
    actor: str
    via: str
    action: str
    client_id: str | None = None
    message_id: str | None = None
    reason: str | None = None
    outcome: str = ""


# -- the log's own ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Marker:
    """Appended by `sync()`; the fold ignores it."""

    kind: Literal["marker"] = "marker"
    id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotPart:
    """One part of a snapshot of the view as of offset `covers` (daemon.core.view)."""

    kind: Literal["snapshot"] = "snapshot"
    snapshot: str
    index: int
    parts: int
    covers: int
    entries: list[list[Any]]


Record = (
    Registered | Claimed | Parked | Announced | Unparked | Paused | Resumed
    | Failed | Redelivered | Unfailed | Released | Notified | DigestAdded | DigestSent | Audited
    | Marker | SnapshotPart
)
NotifyRecord = Notified | DigestAdded | DigestSent

_ADAPTER: TypeAdapter[Record] = TypeAdapter(
    Annotated[Record, Field(discriminator="kind")]
)


def decode(body: bytes | str | dict[str, Any]) -> Record | None:
    """The record in `body`, or None if it is not one (never raises)."""
    try:
        if isinstance(body, dict):
            return _ADAPTER.validate_python(body)
        return _ADAPTER.validate_json(body)
    except (ValidationError, ValueError):
        return None


def as_dict(record: Record) -> dict[str, Any]:
    """The record's fields as plain data (the wire form without the envelope)."""
    return dataclasses.asdict(record)


def encode(record: Record, replica: str, at: str) -> bytes:
    """The record as JSON, with who wrote it and when; total for any payload."""
    data = {**as_dict(record), "replica": replica, "at": at}
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return orjson.dumps(jsonable(data))


def jsonable(value: Any) -> Any:
    """`value` with whatever JSON cannot carry written as text (pure).

    orjson refuses integers wider than 64 bits and strings with lone
    surrogates; both can arrive in a producer's payload.
    """
    if isinstance(value, dict):
        return {_text(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        return _text(value)
    return _text(str(value))


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def display_payload(body: bytes) -> Any:
    """What the producer sent, for people: its JSON, or the start of its text (always JSON-safe).

    Larger than MAX_DISPLAY_BYTES, only the start is kept, as text.
    """
    if len(body) > MAX_DISPLAY_BYTES:
        return _truncated(body)
    try:  # the standard parser: a wide integer stays exact (then written as text)
        return jsonable(json.loads(body))
    except (ValueError, RecursionError):  # not JSON, or nested deeper than we follow
        return body[:2000].decode("utf-8", "replace")


def _truncated(raw: bytes) -> dict[str, Any]:
    return {"truncated": True, "bytes": len(raw),
            "start": raw[:MAX_DISPLAY_BYTES].decode("utf-8", "replace")}
