"""The audit trail: the entries an admin action leaves, and pages of them (pure).

`perform` (daemon/operations/actions.py) writes one `audit` record per
action that changes something, after it ran, refused ones included; an
action over several clients (`resume_all`, a group's retry) writes one per
client it answered for, but for a group member forwarded to the replica
holding its park: that replica audits it (`"forwarded": true` in its result).
The view keeps the latest entries (`View.audit`); `audit_page` reads them
newest first, with the API's and the console's filters, for
`GET /api/v1/audit` and the `/audit` page.

The cursor is an entry's `id`: the stream offset of its record, the same on
every replica; `?before=<id>` lists the entries older than that one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from daemon.core.records import Audited, short_error
from daemon.operations.listing import BadQuery, page_limit

VIAS = ("console", "api", "cli", "control")
"""The faces an action comes through (SPEC section 9)."""
AUDIT_LIMIT = 100
AUDIT_MAX_LIMIT = 1000
MAX_TEXT = 500  # an actor or a reason, as long as any admin would type one
FIELDS = ("id", "at", "actor", "via", "action", "client_id", "message_id", "reason", "outcome")


def _cut(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def outcome_of(answer: Mapping[str, Any]) -> str:
    """An action's outcome in a word: a retry's `succeeded`/`failed`, a refusal's error, `ok`."""
    if answer.get("ok") is False:
        return short_error(str(answer.get("error") or "refused"))
    outcome = answer.get("outcome")
    return outcome if isinstance(outcome, str) and outcome else "ok"


def entries_for(asked: Audited, *, answer: Mapping[str, Any] | None = None,
                error: str | None = None) -> list[Audited]:
    """The records an action leaves, from what was `asked` (no outcome yet) and its answer
    or error: one, or one per client of an answer's `results`."""
    asked = replace(asked, actor=_cut(asked.actor) or "", reason=_cut(asked.reason))

    def entry(client: Any, message: Any, outcome: str) -> Audited:
        return replace(asked, client_id=client if isinstance(client, str) else None,
                       message_id=message if isinstance(message, str) else None,
                       outcome=outcome)

    if error is not None or answer is None:
        return [replace(asked, outcome=short_error(error or "refused"))]
    results = answer.get("results")
    if isinstance(results, list) and results and all(isinstance(r, dict) for r in results):
        return [entry(r.get("client_id") or asked.client_id, r.get("message_id"),
                      outcome_of(r)) for r in results if r.get("forwarded") is not True]
    return [entry(asked.client_id or answer.get("client_id"),
                  asked.message_id or answer.get("message_id"), outcome_of(answer))]


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which entries to list: one client's, one actor's, up to `limit`, older than `before`."""

    client_id: str | None = None
    actor: str | None = None
    limit: int = AUDIT_LIMIT
    before: int | None = None


def audit_query(query: Mapping[str, str], *, only: str | None = None) -> AuditQuery:
    """`?client_id=&actor=&limit=&before=` read and checked; an empty value counts as not given.

    `only` (a client's own token) forces the client. Raises BadQuery naming the
    parameter and what it may be.
    """
    limit = page_limit(query, AUDIT_LIMIT, AUDIT_MAX_LIMIT)
    before = query.get("before") or None
    if before is not None and not (before.isascii() and before.isdigit() and len(before) < 20):
        raise BadQuery("before must be an entry's id (a whole number), the `next` of the"
                       " previous page")
    return AuditQuery(client_id=only or query.get("client_id") or None,
                      actor=query.get("actor") or None,
                      limit=limit,
                      before=None if before is None else int(before))


def describe(offset: int, entry: Audited) -> dict[str, Any]:
    """One entry as the API lists it."""
    return {"id": offset, "at": entry.at, "actor": entry.actor, "via": entry.via,
            "action": entry.action, "client_id": entry.client_id,
            "message_id": entry.message_id, "reason": entry.reason, "outcome": entry.outcome}


def audit_page(entries: Sequence[tuple[int, Audited]], query: AuditQuery,
               since: str = "") -> dict[str, Any]:
    """`{"entries", "next"}`: up to `limit` entries newest first, filtered, older than
    `before`; `next` is the last one's id when older ones match too. `entries` is the
    view's trail, oldest first; those written before `since` (the retention) are left out.
    """
    page: list[dict[str, Any]] = []
    for offset, entry in reversed(entries):
        if query.before is not None and offset >= query.before:
            continue
        if (entry.at < since or (query.client_id and entry.client_id != query.client_id)
                or (query.actor and entry.actor != query.actor)):
            continue
        if len(page) == query.limit:
            return {"entries": page, "next": str(page[-1]["id"])}
        page.append(describe(offset, entry))
    return {"entries": page, "next": None}


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet reads a cell starting with one of these as a formula (CSV injection)."""


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def as_csv(entries: Sequence[Mapping[str, Any]]) -> str:
    """Entries as CSV with a header line (pure): quoted as the csv module does, and a
    cell that a spreadsheet would run as a formula starts with `'`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for entry in entries:
        writer.writerow([_cell(entry.get(name)) for name in FIELDS])
    return out.getvalue()
