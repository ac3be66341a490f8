"""`system.noop`: does nothing, or fails as asked (smoke tests, demos, benchmarks).

It is on the benchmark hot path, so it stays trivial: no I/O, no logging.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from handlers.base import Context, Handler, Item
from handlers.errors import PermanentError, TransientError


class NoopPayload(BaseModel):
    """`{}` succeeds; `{"fail": "transient"}` or `{"fail": "permanent"}` fails that way."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {}, {"fail": "permanent"},
    ]})

    fail: Literal["transient", "permanent"] | None = None


async def noop(item: Item[NoopPayload], ctx: Context) -> None:
    """Do nothing, or raise the failure the payload asks for."""
    fail = item.payload.fail
    if fail == "transient":
        raise TransientError("system.noop asked to fail (transient)")
    if fail == "permanent":
        raise PermanentError("system.noop asked to fail (permanent)")


HANDLERS = (
    Handler(
        type="system.noop",
        payload=NoopPayload,
        func=noop,
        queue="blocking",
        description="does nothing, or fails as asked",
    ),
)
