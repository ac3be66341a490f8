"""The events log and its Server-Sent Events, pure: records to events, frames, ids, arguments."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from daemon.broker.topology import Topology, events_log_segment
from daemon.core.event_log import LoggedEvent, logged_event
from daemon.core.events import event_body
from daemon.faces.http.sse import BadEventId, frame, last_event_id, since_of


def test_an_event_of_the_daemon_is_read_back_with_its_offset_name_and_client():
    """What `event_body` writes, the log gives back: the same JSON on one line."""
    body = event_body("client.parked", client_id="acme", message_id="X", type_="product.sync",
                      queue="blocking", error="HTTP 422")
    event = logged_event(7, body)
    assert event is not None
    assert (event.offset, event.event, event.client_id) == (7, "client.parked", "acme")
    assert orjson.loads(event.data) == orjson.loads(body)


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", b'{"client_id": "acme"}', b'{"event": 3}',
    b'{"event": "client.parked\\ndata: forged"}', b'{"event": ""}',
])
def test_a_record_that_is_not_an_event_is_left_out(body):
    """Anything that can publish to the events exchange writes to the log: only events pass."""
    assert logged_event(1, body) is None


def test_an_event_whose_json_spans_lines_is_written_on_one():
    """A body with newlines in it (pretty JSON) cannot add a field to the SSE message."""
    event = logged_event(3, b'{\n "event": "item.failed",\n "client_id": "acme"\n}')
    assert event is not None
    assert b"\n" not in event.data


def test_a_frame_is_id_event_and_data_then_a_blank_line():
    event = LoggedEvent(42, "client.resumed", "acme", b'{"event":"client.resumed"}')
    assert frame(event) == (b'id: 42\nevent: client.resumed\n'
                            b'data: {"event":"client.resumed"}\n\n')


@pytest.mark.parametrize(("header", "after"), [
    (None, None), ("", None), ("0", 0), (" 17 ", 17), ("18446744073709551615", 2**64 - 1),
])
def test_last_event_id_names_the_offset_to_go_on_after(header, after):
    assert last_event_id(header) == after


@pytest.mark.parametrize("header", ["-1", "abc", "1.5", "١٢", "9" * 21])
def test_a_last_event_id_that_is_no_offset_is_refused(header):
    with pytest.raises(BadEventId) as refused:
        last_event_id(header)
    assert str(refused.value) == ("Last-Event-ID must be the id of an event of this stream, "
                                  "a whole number")


def test_the_events_log_is_a_stream_kept_by_age_and_size():
    """An hour and 100 MB by default, in segments of a tenth of the size."""
    topo = Topology("s2s")
    assert topo.events_log == "s2s.events.log"
    assert topo.events_log_arguments() == {
        "x-queue-type": "stream", "x-max-age": "1h", "x-max-length-bytes": 100_000_000,
        "x-stream-max-segment-size-bytes": 10_000_000}


@pytest.mark.parametrize(("limit", "segment"), [
    (4096, 4096), (5_000_000, 1_000_000), (100_000_000, 10_000_000),
    (10_000_000_000, 50_000_000),
])
def test_a_segment_is_a_tenth_of_the_limit_within_bounds(limit, segment):
    """Whole segments are dropped, so a segment much bigger than the limit would void it."""
    assert events_log_segment(limit) == segment


def test_since_is_a_time_in_whole_seconds_or_refused():
    """`?since=` of a console page: seconds since 1970; absent or blank, none."""
    assert since_of("1796035199") == datetime(2026, 11, 30, 10, 39, 59, tzinfo=UTC)
    assert since_of(None) is since_of(" ") is None
    for bad in ("-1", "1.5", "soon", "1" * 12, "١٢"):
        with pytest.raises(BadEventId) as refused:
            since_of(bad)
        assert str(refused.value) == "since must be a time in whole seconds since 1970"
