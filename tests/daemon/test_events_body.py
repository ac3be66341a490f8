"""event_body: the JSON of a lifecycle event (SPEC §6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from daemon.core.events import EVENTS, event_body

COMMON = ("event", "client_id", "message_id", "type", "queue", "at")


def body(event: str = "item.succeeded", **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        event_body(event, client_id="acme", message_id="m-1", type_="system.noop",
                   queue="blocking", **extra)
    )
    return data


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_carries_the_common_fields(event):
    """event, client_id, message_id, type, queue and at, whatever the event."""
    data = body(event)
    assert set(data) == set(COMMON)
    assert {k: data[k] for k in COMMON if k != "at"} == {
        "event": event,
        "client_id": "acme",
        "message_id": "m-1",
        "type": "system.noop",
        "queue": "blocking",
    }


def test_at_is_iso_8601_utc_ending_in_z_and_is_now():
    """Millisecond precision, `Z` for UTC, taken when the body is built."""
    before = datetime.now(UTC)
    at = body()["at"]
    after = datetime.now(UTC)
    assert at.endswith("Z")
    assert "+" not in at
    parsed = datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(milliseconds=1) <= parsed <= after


@pytest.mark.parametrize(
    ("event", "extra"),
    [
        ("item.succeeded", {"attempts": 2, "duration_ms": 17}),
        ("item.failed", {"error": "boom", "attempt": 3, "final": True}),
        ("client.parked", {"error": "payload is not valid"}),
        ("client.resumed", {"how": "skip", "actor": "alice"}),
        ("item.skipped", {"actor": "alice", "reason": "duplicate"}),
        ("client.paused", {"actor": "cli"}),
    ],
)
def test_extra_fields_are_merged_into_the_body(event, extra):
    """The fields SPEC §6 names for each event sit beside the common ones."""
    data = body(event, **extra)
    assert {k: data[k] for k in extra} == extra
    assert set(data) == set(COMMON) | set(extra)


def test_a_bad_item_without_id_or_type_still_gives_an_event():
    """message_id and type are null when the item had none."""
    data = orjson.loads(
        event_body("item.failed", client_id="acme", message_id=None, type_=None,
                   queue="nonblocking", error="message has no message_id property")
    )
    assert (data["message_id"], data["type"], data["queue"]) == (None, None, "nonblocking")
