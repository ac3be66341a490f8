"""call_handler and backoff: the one place a handler runs, and the wait between attempts."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from pydantic import BaseModel, ConfigDict
from structlog.testing import capture_logs

from daemon.core.items import Parsed
from daemon.core.metrics import ItemMetrics
from daemon.core.runtime import backoff, call_handler
from handlers.base import Context, Handler, HandlerFunc, Item
from handlers.errors import PermanentError, TransientError


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    what: str = "nothing"


class NoContext:
    """A handler context that no handler here uses (only what they would call, raising)."""

    def connection(self, client_id: str, section: str) -> Any:
        raise AssertionError("not used")

    def connector(self, client_id: str, section: str) -> Any:
        raise AssertionError("not used")


def parsed(func: HandlerFunc, type_: str = "test.thing") -> Parsed:
    """A valid item of `type_` for client acme, handled by `func`."""
    handler = Handler(type=type_, payload=Payload, func=func)
    return Parsed(Item("m-1", type_, "acme", Payload(), "blocking"), handler)


async def run(func: HandlerFunc, attempt: int = 1, limit: float = 5.0) -> None:
    await call_handler(parsed(func), attempt, cast(Context, NoContext()), limit, ItemMetrics())


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "seconds"),
    [
        (1, 1.0, 60.0, 1.0),
        (2, 1.0, 60.0, 2.0),
        (3, 1.0, 60.0, 4.0),
        (6, 1.0, 60.0, 32.0),
        (7, 1.0, 60.0, 60.0),
        (50, 1.0, 60.0, 60.0),
        (1, 0.5, 10.0, 0.5),
        (5, 0.5, 10.0, 8.0),
        (6, 0.5, 10.0, 10.0),
        (3, 0.0, 60.0, 0.0),
        (3, 5.0, 0.0, 0.0),
    ],
)
def test_backoff_doubles_from_the_base_up_to_the_cap(attempt, base, cap, seconds):
    """base * 2**(attempt-1), never more than the cap, always a float."""
    result = backoff(attempt, base, cap)
    assert result == seconds
    assert isinstance(result, float)


async def test_a_handler_that_succeeds_returns_quietly():
    """No exception means the item succeeded."""
    calls: list[Item[Any]] = []

    async def fine(item: Item[Any], ctx: Any) -> None:
        calls.append(item)

    await run(fine)
    assert [item.message_id for item in calls] == ["m-1"]


async def test_a_handler_running_past_the_timeout_is_a_transient_error():
    """It is cancelled, and the error says which type and how long."""

    async def slow(item: Item[Any], ctx: Any) -> None:
        await asyncio.sleep(3600)

    with pytest.raises(TransientError) as info:
        await run(slow, limit=0.05)
    assert str(info.value) == "test.thing timed out after 0.05 s"


async def test_a_handler_that_crashes_is_a_permanent_error_logged_with_its_traceback():
    """A bug in a handler parks the item instead of looping on it."""

    async def crashes(item: Item[Any], ctx: Any) -> None:
        raise ValueError("boom")

    with capture_logs() as logs, pytest.raises(PermanentError) as info:
        await run(crashes)
    assert str(info.value) == "test.thing crashed: ValueError: boom"
    assert isinstance(info.value.__cause__, ValueError)
    assert [(e["event"], e["log_level"], e["message_id"]) for e in logs] == [
        ("handler.crashed", "error", "m-1")
    ]
    assert logs[0]["exc_info"] is True


@pytest.mark.parametrize(
    "error",
    [TransientError("channel answered 503"), PermanentError("channel answered 404")],
    ids=["transient", "permanent"],
)
async def test_what_the_handler_raises_itself_passes_through_unchanged(error):
    """TransientError and PermanentError are the handler's verdict, not rewritten."""

    async def fails(item: Item[Any], ctx: Any) -> None:
        raise error

    with capture_logs() as logs, pytest.raises(type(error)) as info:
        await run(fails)
    assert info.value is error
    assert logs == []


@pytest.mark.parametrize("attempt", [1, 2, 5])
async def test_the_attempt_number_reaches_the_handler(attempt):
    """The handler sees which attempt this is; the rest of the item is unchanged."""
    seen: list[Item[Any]] = []

    async def records(item: Item[Any], ctx: Any) -> None:
        seen.append(item)

    await run(records, attempt=attempt)
    [item] = seen
    assert item.attempt == attempt
    assert (item.message_id, item.type, item.client_id, item.payload, item.queue) == (
        "m-1", "test.thing", "acme", Payload(), "blocking"
    )
