"""`stock.update`: an example instruction type from a package of its own.

It sets a product's stock level on the client's sales channel with
`PUT {channel base_url}/stock/{sku}` and `{"quantity": n}`, through the
daemon's connector, so it gets the bearer token, the `Idempotency-Key`, the
URL escaping, the timeouts and the transient/permanent rule for free.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from handlers.base import Context, Handler, Item
from handlers.errors import PermanentError


class StockPayload(BaseModel):
    """The stock level of one product."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"sku": "ABC-1", "quantity": 12},
    ]})

    sku: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    quantity: Annotated[int, Field(ge=0)]


async def update_stock(item: Item[StockPayload], ctx: Context) -> None:
    """`PUT {channel base_url}/stock/{sku}` with `{"quantity": n}`."""
    if ctx.connection(item.client_id, "channel").kind != "http":
        raise PermanentError("stock.update speaks the generic HTTP API only (kind = \"http\")")
    api = ctx.connector(item.client_id, "channel")
    await api.put(("stock", item.payload.sku), {"quantity": item.payload.quantity},
                  message_id=item.message_id)


HANDLERS = (
    Handler(type="stock.update", payload=StockPayload, func=update_stock, queue="blocking",
            description="set a product's stock level on the sales channel"),
)
