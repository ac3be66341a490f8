"""The history of what ran, without a broker: the fold into the index, pages, cursors and the
query (daemon/core/history.py, daemon/operations/history.py)."""

from __future__ import annotations

from collections import deque

import orjson
import pytest

from daemon.broker.topology import Topology
from daemon.core.history import Row, cursor, iso, page, parse_cursor, take
from daemon.operations.history import HISTORY_LIMIT, HistoryQuery, history_query
from daemon.operations.listing import BadQuery

AT = 1_764_500_000_000  # 2025-11-30T10:53:20.000Z


def entry(client: str, mid: str, outcome: str = "succeeded", n: int = 0) -> list[object]:
    return [AT + n, client, mid, "product.sync", outcome, 1, 12.5, None]


def fold(*messages: list[list[object]], keep: int = 200) -> dict[str, deque[Row]]:
    clients: dict[str, deque[Row]] = {}
    for offset, entries in enumerate(messages):
        assert take(clients, offset * 10, orjson.dumps(entries), keep)
    return clients


def test_entries_go_to_their_client_in_stream_order_and_the_oldest_go_past_keep():
    """Each client keeps its last `keep` entries, placed by (offset, index in the message)."""
    clients = fold([entry("acme", "A1"), entry("globex", "G1"), entry("acme", "A2")],
                   [entry("acme", "A3")], keep=2)
    assert [(r[0], r[2]) for r in clients["acme"]] == [((0, 2), "A2"), ((10, 0), "A3")]
    assert [(r[0], r[2]) for r in clients["globex"]] == [((0, 1), "G1")]


@pytest.mark.parametrize("body", [b"not json", b'{"a": 1}', b"[[1, 2]]",
                                  orjson.dumps([[AT, "acme", "m", "t", "exploded", 1, 1, None]]),
                                  orjson.dumps([["yesterday", "acme", "m", "t", "failed", 1, 1,
                                                 None]])])
def test_a_message_of_another_shape_is_refused(body):
    """False for the log line; nothing of a bad entry reaches the index."""
    clients: dict[str, deque[Row]] = {}
    assert not take(clients, 0, body, 10)
    assert clients == {}


def test_the_good_entries_of_a_message_with_a_bad_one_are_kept():
    clients: dict[str, deque[Row]] = {}
    assert not take(clients, 7, orjson.dumps([[1], entry("acme", "A1")]), 10)
    assert [(r[0], r[2]) for r in clients["acme"]] == [((7, 1), "A1")]


def test_a_page_is_newest_first_and_next_leads_to_the_rest_until_none():
    """Following `next` visits every entry once, newest first."""
    rows = fold([entry("acme", f"m{n}", n=n) for n in range(5)])["acme"]
    first, after = page(rows, 2, None)
    assert [i["message_id"] for i in first] == ["m4", "m3"]
    assert after == "0-3"
    second, after2 = page(rows, 2, parse_cursor(after))
    assert [i["message_id"] for i in second] == ["m2", "m1"]
    last, end = page(rows, 2, parse_cursor(str(after2)))
    assert ([i["message_id"] for i in last], end) == (["m0"], None)
    assert page(rows, 5, None)[1] is None
    assert first[0] == {"at": "2025-11-30T10:53:20.004Z", "message_id": "m4",
                        "type": "product.sync", "outcome": "succeeded", "attempts": 1,
                        "duration_ms": 12.5, "error": None}


def test_times_are_written_as_the_records_and_events_write_them():
    assert iso(AT) == "2025-11-30T10:53:20.000Z"


@pytest.mark.parametrize(("text", "position"), [
    ("0-0", (0, 0)), ("1234-5", (1234, 5)), ("1234", None), ("-5", None), ("a-b", None),
    ("1-2-3", None), ("\u0661-1", None), ("9" * 20 + "-1", None), ("", None),
])
def test_a_cursor_is_an_offset_and_an_index(text, position):
    assert parse_cursor(text) == position
    if position is not None:
        assert cursor(position) == text


CURSOR_ERROR = "before must be the next cursor of a previous page, like 1234-5"
LIMIT_ERROR = "limit must be a whole number from 1 to 1000"


@pytest.mark.parametrize(("query", "expected"), [
    ({}, HistoryQuery(HISTORY_LIMIT, None)),
    ({"limit": "", "before": ""}, HistoryQuery(100, None)),
    ({"limit": "1000", "before": "17-3"}, HistoryQuery(1000, (17, 3))),
])
def test_a_good_history_query_is_read(query, expected):
    assert history_query(query) == expected


@pytest.mark.parametrize(("query", "error"), [
    ({"limit": "0"}, LIMIT_ERROR), ({"limit": "1001"}, LIMIT_ERROR),
    ({"limit": "ten"}, LIMIT_ERROR), ({"limit": "9" * 5000}, LIMIT_ERROR),
    ({"before": "yesterday"}, CURSOR_ERROR), ({"before": "12"}, CURSOR_ERROR),
])
def test_a_bad_history_query_is_refused_naming_the_parameter(query, error):
    with pytest.raises(BadQuery) as caught:
        history_query(query)
    assert str(caught.value) == error


def test_the_history_stream_is_kept_by_age_and_by_size():
    """x-max-age and x-max-length-bytes from the settings, small segments."""
    assert Topology("s2s", history_max_age_s=7 * 86_400,
                    history_max_bytes=10**9).history_stream_arguments() == {
        "x-queue-type": "stream", "x-max-age": "7D", "x-max-length-bytes": 10**9,
        "x-stream-max-segment-size-bytes": 16_000_000}
    assert Topology("s2s").history == "s2s.history"
