"""The audit trail's pure parts (daemon/operations/audit.py): the entries an action leaves,
the query of `GET /api/v1/audit`, and its pages."""

from __future__ import annotations

import csv
import io

import pytest

from daemon.core.records import Audited
from daemon.operations.audit import (
    AuditQuery,
    as_csv,
    audit_page,
    audit_query,
    entries_for,
)
from daemon.operations.listing import BadQuery

ASKED = Audited(actor="admin", via="api", action="retry", client_id="acme", reason="fixed")


@pytest.mark.parametrize(
    ("answer", "error", "outcome"),
    [
        ({"outcome": "succeeded", "message_id": "X"}, None, "succeeded"),
        ({"outcome": "failed", "error": "HTTP 422", "message_id": "X"}, None, "failed"),
        ({"client_id": "acme", "state": "paused"}, None, "ok"),
        (None, "client 'acme' is not parked", "client 'acme' is not parked"),
    ],
)
def test_an_action_leaves_one_entry_with_its_outcome(answer, error, outcome):
    """A retry says succeeded or failed, anything else done says ok, a refusal its error."""
    [entry] = entries_for(ASKED, answer=answer, error=error)
    assert (entry.actor, entry.via, entry.action, entry.client_id, entry.reason,
            entry.outcome) == ("admin", "api", "retry", "acme", "fixed", outcome)
    assert entry.message_id == (answer or {}).get("message_id")


def test_an_action_over_several_clients_leaves_one_entry_per_client():
    """resume_all (and a group's retry) answer `results`: each becomes its own entry."""
    asked = Audited(actor="ops", via="cli", action="resume_all")
    entries = entries_for(asked, answer={"results": [
        {"client_id": "a", "ok": True, "state": "running"},
        {"client_id": "b", "ok": False, "error": "client 'b' is not paused"}]})
    assert [(e.client_id, e.outcome) for e in entries] == [
        ("a", "ok"), ("b", "client 'b' is not paused")]


def test_a_group_member_forwarded_to_its_parks_holder_is_left_to_the_holder():
    """The holder audits a forwarded member (refused there too); the asker only the rest."""
    asked = Audited(actor="ops", via="api", action="retry_parked_group", reason="fixed")
    entries = entries_for(asked, answer={"group": "g", "count": 3, "results": [
        {"client_id": "a", "message_id": "A", "ok": True, "outcome": "succeeded",
         "forwarded": True},
        {"client_id": "b", "message_id": "B", "ok": False, "error": "no", "forwarded": True},
        {"client_id": "c", "message_id": "C", "ok": True, "outcome": "failed"}]})
    assert [(e.client_id, e.message_id, e.action, e.outcome) for e in entries] == [
        ("c", "C", "retry_parked_group", "failed")]


def test_text_from_outside_is_cut():
    """An actor or a reason of a megabyte is kept as its first 500 characters."""
    [entry] = entries_for(Audited(actor="a" * 9000, via="control", action="skip",
                                  reason="r" * 9000), answer={})
    assert (len(entry.actor), len(entry.reason or "")) == (501, 501)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "1001"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "ten"}, "limit must be a whole number from 1 to 1000"),
        ({"before": "-3"}, "before must be an entry's id (a whole number), the `next` of the"
                           " previous page"),
        ({"before": "9" * 40}, "before must be an entry's id (a whole number), the `next` of"
                               " the previous page"),
    ],
)
def test_a_bad_query_is_refused_with_its_reason(query, error):
    with pytest.raises(BadQuery) as info:
        audit_query(query)
    assert str(info.value) == error


def test_a_client_token_reads_only_its_own_client():
    """`only` wins over `?client_id=`; empty values count as not given."""
    assert audit_query({"client_id": "globex", "actor": ""}, only="acme") == AuditQuery(
        client_id="acme")
    assert audit_query({"limit": "5", "before": "40", "actor": "admin"}) == AuditQuery(
        actor="admin", limit=5, before=40)


def _trail(n: int) -> list[tuple[int, Audited]]:
    return [(10 + i, Audited(at=f"2025-01-01T00:00:{i:02d}.000Z", actor=f"u{i % 2}",
                             via="api", action="pause", client_id="acme" if i % 3 else "globex",
                             outcome="ok")) for i in range(n)]


def test_pages_run_newest_first_and_next_is_the_last_id():
    """Following `next` as `before` reads every matching entry once, newest first."""
    trail, seen, before = _trail(20), [], None
    while True:
        page = audit_page(trail, AuditQuery(client_id="acme", limit=4, before=before))
        seen += [e["id"] for e in page["entries"]]
        if page["next"] is None:
            break
        before = int(page["next"])
        assert page["next"] == str(page["entries"][-1]["id"])
    assert seen == [o for o, e in reversed(trail) if e.client_id == "acme"]


def test_a_page_filters_by_actor_and_leaves_out_entries_past_the_retention():
    trail = _trail(6)
    page = audit_page(trail, AuditQuery(actor="u1"), since="2025-01-01T00:00:02.000Z")
    assert [e["id"] for e in page["entries"]] == [15, 13]
    assert page["next"] is None
    assert set(page["entries"][0]) == {"id", "at", "actor", "via", "action", "client_id",
                                       "message_id", "reason", "outcome"}


def test_csv_quotes_what_needs_it_and_defuses_formulas():
    """Commas, quotes and newlines survive a CSV reader; a cell a spreadsheet would run as a
    formula (= + - @) starts with a quote instead."""
    entry = {"id": 7, "at": "T", "actor": "=HYPERLINK(\"http://x\")", "via": "api",
             "action": "skip", "client_id": "acme", "message_id": "-1+2", "outcome": "@SUM(A1)",
             "reason": 'bad, "very"\nbad'}
    text = as_csv([entry])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [
        ["id", "at", "actor", "via", "action", "client_id", "message_id", "reason", "outcome"],
        ["7", "T", "'=HYPERLINK(\"http://x\")", "api", "skip", "acme", "'-1+2",
         'bad, "very"\nbad', "'@SUM(A1)"]]
    assert text.endswith("\r\n")
