"""The query of a client's history page (SPEC §9): `?limit=&before=`, read and checked (pure).

`before` is the cursor a page answered as `next`: the place in the history
stream of the oldest entry it holds, `"<offset>-<index>"` (daemon/core/history.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daemon.core.history import Position, parse_cursor
from daemon.operations.listing import BadQuery, page_limit

HISTORY_LIMIT = 100
HISTORY_MAX_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Up to `limit` entries, newest first, placed before `before` (None: the newest)."""

    limit: int = HISTORY_LIMIT
    before: Position | None = None


def history_query(query: Mapping[str, str]) -> HistoryQuery:
    """`?limit=&before=` read and checked; an empty value counts as not given.

    Raises BadQuery naming the parameter and what it may be.
    """
    limit = page_limit(query, HISTORY_LIMIT, HISTORY_MAX_LIMIT)
    text = query.get("before") or None
    before = None if text is None else parse_cursor(text)
    if text is not None and before is None:
        raise BadQuery("before must be the next cursor of a previous page, like 1234-5")
    return HistoryQuery(limit, before)
