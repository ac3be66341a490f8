"""Paging a listing of clients by id (SPEC section 9): the query, and one page of ids.

Pure, so the API and the console read `?state=&limit=&after=` alike and a
test can check every edge without a broker. A page is found by bisecting
the sorted ids for `after` and reading on until it holds `limit` ids that
pass the filter, plus one to know whether there is a next page: the work is
that of the page, not of the number of clients.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from common.clients import CLIENT_ID_RE

CLIENTS_LIMIT = 100
CLIENTS_MAX_LIMIT = 1000
STATES = ("parked", "paused", "running")


class BadQuery(ValueError):
    """Raised when a listing's query parameter is not one we serve; says which and why."""


@dataclass(frozen=True, slots=True)
class ClientsQuery:
    """Which clients to list: `state` (None: all), up to `limit`, ids after `after`."""

    state: str | None = None
    limit: int = CLIENTS_LIMIT
    after: str | None = None


def page_limit(query: Mapping[str, str], default: int, maximum: int) -> int:
    """`?limit=` as a number of entries from 1 to `maximum` (`default` when empty or not
    given); raises BadQuery otherwise (int() refuses past 4,300 digits: checked first)."""
    limit = query.get("limit") or None
    if limit is None:
        return default
    if not (limit.isascii() and limit.isdigit() and len(limit) <= len(str(maximum))
            and 1 <= int(limit) <= maximum):
        raise BadQuery(f"limit must be a whole number from 1 to {maximum}")
    return int(limit)


def clients_query(query: Mapping[str, str]) -> ClientsQuery:
    """`?state=&limit=&after=` read and checked; an empty value counts as not given.

    Raises BadQuery naming the parameter and what it may be.
    """
    state = query.get("state") or None
    if state is not None and state not in STATES:
        raise BadQuery(f"state must be one of {', '.join(STATES)}")
    limit = page_limit(query, CLIENTS_LIMIT, CLIENTS_MAX_LIMIT)
    after = query.get("after") or None
    if after is not None and not CLIENT_ID_RE.fullmatch(after):
        raise BadQuery("after must be a client id (1 to 64 characters from A-Z a-z 0-9 _ -),"
                       " the last one of the previous page")
    return ClientsQuery(state, limit, after)


def page_after(ordered: Sequence[str], after: str | None, limit: int,
               keep: Callable[[str], bool] = lambda _: True) -> tuple[list[str], str | None]:
    """Up to `limit` ids of sorted `ordered` past `after` that `keep` accepts, and the
    cursor of the next page: the page's last id, or None when no more ids follow."""
    page: list[str] = []
    for index in range(0 if after is None else bisect_right(ordered, after), len(ordered)):
        client_id = ordered[index]
        if not keep(client_id):
            continue
        if len(page) == limit:
            return page, page[-1]
        page.append(client_id)
    return page, None
