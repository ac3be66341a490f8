"""system.noop: succeeds, or fails the way it is asked to."""

from __future__ import annotations

import pytest

from handlers.errors import PermanentError, TransientError
from handlers.system import NoopPayload, noop

from .conftest import make_item


async def test_noop_does_nothing_by_default(ctx):
    """An empty payload succeeds."""
    await noop(make_item("system.noop", NoopPayload()), ctx)


@pytest.mark.parametrize(
    ("fail", "error"), [("transient", TransientError), ("permanent", PermanentError)]
)
async def test_noop_fails_as_asked(ctx, fail, error):
    """`fail` picks the error class, and the message says it was asked for."""
    payload = NoopPayload.model_validate({"fail": fail})
    with pytest.raises(error) as info:
        await noop(make_item("system.noop", payload), ctx)
    assert str(info.value) == f"system.noop asked to fail ({fail})"


def test_noop_refuses_other_failure_kinds_and_fields():
    """The payload is strict like every other."""
    for bad in [{"fail": "sometimes"}, {"extra": 1}]:
        with pytest.raises(ValueError, match=r"fail|extra"):
            NoopPayload.model_validate(bad)
