"""Paging clients by id (daemon/operations/listing.py): the query's checks and the pages,
without a broker."""

from __future__ import annotations

import pytest

from daemon.operations.listing import (
    CLIENTS_LIMIT,
    BadQuery,
    ClientsQuery,
    clients_query,
    page_after,
)

IDS = [f"c{n:03}" for n in range(10)]


@pytest.mark.parametrize(("query", "expected"), [
    ({}, ClientsQuery(None, CLIENTS_LIMIT, None)),
    ({"state": "", "limit": "", "after": ""}, ClientsQuery(None, CLIENTS_LIMIT, None)),
    ({"state": "parked"}, ClientsQuery("parked", CLIENTS_LIMIT, None)),
    ({"limit": "1"}, ClientsQuery(None, 1, None)),
    ({"limit": "1000", "after": "acme_2-B"}, ClientsQuery(None, 1000, "acme_2-B")),
    ({"state": "running", "limit": "7", "after": "x"}, ClientsQuery("running", 7, "x")),
])
def test_a_good_query_is_read_and_empty_values_count_as_not_given(query, expected):
    """state, limit and after as given; the default limit is 100."""
    assert clients_query(query) == expected


LIMIT_ERROR = "limit must be a whole number from 1 to 1000"
AFTER_ERROR = ("after must be a client id (1 to 64 characters from A-Z a-z 0-9 _ -), the last"
               " one of the previous page")


@pytest.mark.parametrize(("query", "error"), [
    ({"state": "stuck"}, "state must be one of parked, paused, running"),
    ({"state": "PARKED"}, "state must be one of parked, paused, running"),
    ({"limit": "0"}, LIMIT_ERROR),
    ({"limit": "1001"}, LIMIT_ERROR),
    ({"limit": "-5"}, LIMIT_ERROR),
    ({"limit": "ten"}, LIMIT_ERROR),
    ({"limit": "2.5"}, LIMIT_ERROR),
    ({"limit": "\u0662"}, LIMIT_ERROR),  # a digit, but not an ASCII one
    ({"limit": "9" * 5000}, LIMIT_ERROR),  # past what int() reads (ValueError, then 500)
    ({"after": "a/b"}, AFTER_ERROR),
    ({"after": "x" * 65}, AFTER_ERROR),
    ({"after": "acme\n"}, AFTER_ERROR),
])
def test_a_bad_query_is_refused_naming_the_parameter_and_what_it_may_be(query, error):
    """One readable sentence per parameter; nothing is guessed."""
    with pytest.raises(BadQuery) as caught:
        clients_query(query)
    assert str(caught.value) == error


@pytest.mark.parametrize("limit", [1, 3, 4, 9, 10, 11, 1000])
def test_following_next_visits_every_id_once_in_order_and_ends_with_none(limit):
    """Page after page, by the cursor each page answers, until it is None."""
    seen: list[str] = []
    after, pages = None, 0
    while True:
        page, after = page_after(IDS, after, limit)
        seen += page
        pages += 1
        assert len(page) <= limit
        if after is None:
            break
        assert after == page[-1]
    assert seen == IDS
    assert pages == max(1, -(-len(IDS) // limit))


def test_a_filter_pages_only_the_ids_it_keeps_and_ends_on_the_last_kept():
    """next is None when no kept id follows, even if others do."""
    odd = set(IDS[1::2])
    assert page_after(IDS, None, 2, odd.__contains__) == (["c001", "c003"], "c003")
    assert page_after(IDS, "c003", 2, odd.__contains__) == (["c005", "c007"], "c007")
    assert page_after(IDS, "c007", 2, odd.__contains__) == (["c009"], None)
    assert page_after(IDS, None, 5, odd.__contains__) == (sorted(odd), None)


@pytest.mark.parametrize(("after", "page"), [
    ("c004", ["c005", "c006"]),  # an id that is listed: exclusive
    ("c004a", ["c005", "c006"]),  # one that is not: the ids sorting after it
    ("a", ["c000", "c001"]),
    ("z", []),
])
def test_after_is_exclusive_and_need_not_be_a_listed_id(after, page):
    """A client registered or gone between two pages does not break the walk."""
    assert page_after(IDS, after, 2)[0] == page


def test_an_empty_listing_is_one_empty_page():
    assert page_after([], None, 100) == ([], None)
