"""Grouping failed items and parks by error pattern (daemon/operations/groups.py), pure."""

from __future__ import annotations

import pytest

from daemon.faces.http.outcomes import group_action
from daemon.operations.groups import (
    Member,
    error_pattern,
    group,
    group_id,
    groups_query,
    item_ids,
    page,
)
from daemon.operations.listing import BadQuery

SHOP_422 = 'PUT /products/{sku} → HTTP 422: {{"message":"sku rejected by the shop"}}'


@pytest.mark.parametrize(
    ("error", "ids", "pattern"),
    [
        (SHOP_422.format(sku="ABC-1"), ("ABC-1",),
         'PUT /products/<id> → HTTP 422: {"message":"sku rejected by the shop"}'),
        (SHOP_422.format(sku="plain"), ("plain",),
         'PUT /products/<id> → HTTP 422: {"message":"sku rejected by the shop"}'),
        ('POST /orders → HTTP 503: {"message":"order SO-17 late by 30 s", "code": "E42"}', (),
         'POST /orders → HTTP 503: {"message":"order <id> late by <n> s", "code": "<value>"}'),
        ("client 'acme' has no channel section in the clients file", (),
         "client '<client>' has no channel section in the clients file"),
        ("its sku 'A' is not the item's sku 'B'", (),
         "its sku '<value>' is not the item's sku '<value>'"),
        ("GET http://127.0.0.1:8080/i/f81d4fae-7dec-11d0-a765-00a0c91e6bf6 failed: timed out"
         " after 60 s", (), "GET http://<n>/i/<id> failed: timed out after <n> s"),
        ("SMTP 550: no mailbox   here\n(m-9)", (), "SMTP 550: no mailbox here (<message_id>)"),
        ("system.noop asked to fail (permanent)", (), "system.noop asked to fail (permanent)"),
        ("acme-corp, acme_2 and acme (not xacme)", (), "acme-corp, <id> and <client> (not xacme)"),
    ],
)
def test_an_error_pattern_replaces_ids_numbers_and_quoted_words(error, ids, pattern):
    """The item's own ids, other ids, numbers and quoted words become placeholders; statuses,
    JSON keys and quoted text with spaces stay."""
    assert error_pattern(error, "m-9", "acme", ids) == pattern


def test_item_ids_are_the_sku_image_id_and_the_id_of_an_object():
    assert item_ids({"sku": "A-1", "image_id": 7, "order": {"id": "SO-1"}, "n": "x"}) == (
        "A-1", "7", "SO-1")
    assert item_ids(["not", "an", "object"]) == ()


def _member(client: str, mid: str, at: str, error: str = "HTTP 422 for {mid}",
            type_: str = "order.add_to_source") -> Member:
    return Member(client, mid, type_, error.format(mid=mid), at)


def test_items_that_failed_for_one_reason_are_one_group_biggest_first():
    """Whoever's they are and whatever their ids; a different type or status is another
    group; each group is oldest first and names its clients."""
    members = [_member("globex", "SO-2", "2026-01-02"), _member("acme", "SO-1", "2026-01-01"),
               _member("acme", "SO-3", "2026-01-03"),
               _member("acme", "SO-4", "2026-01-04", "HTTP 503 for {mid}"),
               _member("acme", "P-1", "2026-01-05", type_="product.sync")]
    groups = [g.describe() for g in group("failed", members)]
    assert groups[0] == {
        "group": group_id("failed", "order.add_to_source", "HTTP 422 for <message_id>"),
        "type": "order.add_to_source", "error_pattern": "HTTP 422 for <message_id>",
        "count": 3, "clients": 2, "client_ids": ["acme", "globex"],
        "first_at": "2026-01-01", "last_at": "2026-01-03", "example_message_id": "SO-1"}
    assert sorted((g["type"], g["error_pattern"], g["count"]) for g in groups[1:]) == [
        ("order.add_to_source", "HTTP 503 for <message_id>", 1),
        ("product.sync", "HTTP 422 for <message_id>", 1)]
    assert group_id("failed", "t", "p") != group_id("parked", "t", "p")


def test_pages_follow_the_cursor_even_when_groups_change_between_pages():
    """limit/after/next walk every group once; a group gone meanwhile moves no other."""
    members = [_member(f"c{n}", f"m{n}-{i}", "t", f"error {'x' * (n + 1)} on {{mid}}")
               for n in range(5) for i in range(n + 1)]
    groups = group("failed", members)
    seen, after = [], None
    while True:
        answer = page(groups, groups_query({"limit": "2", **({"after": after} if after else {})}))
        seen += [g["count"] for g in answer["groups"]]
        after = answer["next"]
        if after is None:
            break
        groups = [g for g in groups if g.count != 3]  # the group of 3 went, between pages
    assert seen == [5, 4, 2, 1]
    assert page(groups, groups_query({}))["next"] is None


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "x"}, "limit must be a whole number from 1 to 1000"),
        ({"after": "abc"}, "after must be the next of the previous page (count-group)"),
        ({"client_id": "a/b"},
         "client_id must be a client id (1 to 64 characters from A-Z a-z 0-9 _ -)"),
    ],
)
def test_a_bad_query_says_which_parameter_and_what_it_may_be(query, error):
    with pytest.raises(BadQuery) as info:
        groups_query(query)
    assert str(info.value) == error


def test_the_console_says_what_a_group_action_did_and_what_it_did_not():
    """Succeeded items, items that failed again and refused ones, each named with its client."""
    result = {"results": [
        {"client_id": "acme", "message_id": "X1", "ok": True, "outcome": "succeeded"},
        {"client_id": "globex", "message_id": "X2", "ok": True, "outcome": "failed",
         "error": "HTTP 422"},
        {"client_id": "initech", "message_id": "X3", "ok": False,
         "error": "client 'initech' is not parked"}]}
    assert group_action("parked", "retry", result) == (False, (
        "Retried, succeeded and running again: X1 of acme (1 item). "
        "Failed again, still parked: X2 of globex (1 item). "
        "Not done: X3: client 'initech' is not parked."))
    assert group_action("failed", "skip", {"results": result["results"][:1]}) == (
        True, "Skipped (kept in the archive): X1 of acme (1 item).")
