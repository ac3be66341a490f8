"""`order.add_to_source` and `fulfillment.add`: non-blocking sends to a client's back office.

Both POST with the item's `message_id` as `Idempotency-Key`, so a receiver that
honours it creates the order or fulfillment once however often it is sent.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from handlers.base import Context, Handler, Item, one_line


def _has_id(value: dict[str, Any]) -> dict[str, Any]:
    """An `id` is required; as text it is one line (it names the item in mails and pages)."""
    given = value.get("id")
    if given in (None, ""):
        raise ValueError("needs an 'id'")
    if isinstance(given, str):
        try:
            one_line(given)
        except ValueError as exc:
            raise ValueError(f"its 'id' {exc}") from None
    return value


class OrderPayload(BaseModel):
    """The order to send to the client's accounting/ERP system."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"order": {"id": "SO-1001", "lines": [{"sku": "ABC-1", "qty": 2}], "total": "19.80"}},
    ]})

    order: dict[str, Any]

    _id = field_validator("order")(_has_id)


class FulfillmentPayload(BaseModel):
    """The fulfillment to send to the client's warehouse."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"fulfillment": {"id": "F-77", "order_id": "SO-1001",
                         "lines": [{"sku": "ABC-1", "qty": 2}]}},
    ]})

    fulfillment: dict[str, Any]

    _id = field_validator("fulfillment")(_has_id)


async def add_order(item: Item[OrderPayload], ctx: Context) -> None:
    """`POST {source base_url}/orders` with the order as body."""
    api = ctx.connector(item.client_id, "source")
    await api.post(("orders",), item.payload.order, message_id=item.message_id)


async def add_fulfillment(item: Item[FulfillmentPayload], ctx: Context) -> None:
    """`POST {warehouse base_url}/fulfillments` with the fulfillment as body."""
    api = ctx.connector(item.client_id, "warehouse")
    await api.post(("fulfillments",), item.payload.fulfillment, message_id=item.message_id)


HANDLERS = (
    Handler(type="order.add_to_source", payload=OrderPayload, func=add_order,
            queue="nonblocking", description="send an order to the client's accounting/ERP"),
    Handler(type="fulfillment.add", payload=FulfillmentPayload, func=add_fulfillment,
            queue="nonblocking", description="send a fulfillment to the client's warehouse"),
)
