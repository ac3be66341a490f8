"""`product.sync` and `product.delete`: a product on the client's sales channel or catalog.

`target` picks the connection (`[clients.<id>.channel]` or `.catalog`); its
`kind` picks the connector (generic HTTP or Magento 2), which knows the
requests.  Both are idempotent, as at-least-once delivery requires: a PUT of
the same product twice leaves the same product, and deleting what is gone
succeeds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationInfo, field_validator

from handlers.base import ONE_LINE, Context, Handler, Item

Sku = Annotated[str, StringConstraints(min_length=1, max_length=255), ONE_LINE]
Target = Literal["channel", "catalog"]


class SyncPayload(BaseModel):
    """The product to create or update, and where."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"sku": "ABC-1", "product": {"name": "Blue mug", "price": 9.9}},
        {"sku": "ABC-1", "product": {"name": "Blue mug"}, "target": "catalog"},
    ]})

    sku: Sku
    product: dict[str, Any]
    target: Target = "channel"

    @field_validator("product")
    @classmethod
    def _same_sku(cls, product: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        given, sku = product.get("sku"), info.data.get("sku")
        if given is not None and sku is not None and given != sku:
            raise ValueError(f"its sku {given!r} is not the item's sku {sku!r}")
        return product


class DeletePayload(BaseModel):
    """The product to delete, and where."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"sku": "ABC-1"},
    ]})

    sku: Sku
    target: Target = "channel"


async def sync_product(item: Item[SyncPayload], ctx: Context) -> None:
    """Create or update the product on the target (HTTP: `PUT {base_url}/products/{sku}`)."""
    payload = item.payload
    api = ctx.connector(item.client_id, payload.target)
    await api.put_product(payload.sku, payload.product, message_id=item.message_id)


async def delete_product(item: Item[DeletePayload], ctx: Context) -> None:
    """Delete the product on the target (HTTP: `DELETE {base_url}/products/{sku}`).

    A 404 (or 410) answer counts as success: the product is already gone, which
    is what was asked, and it is what a redelivered delete will see.
    """
    payload = item.payload
    api = ctx.connector(item.client_id, payload.target)
    await api.delete_product(payload.sku, message_id=item.message_id)


HANDLERS = (
    Handler(
        type="product.sync",
        payload=SyncPayload,
        func=sync_product,
        queue="blocking",
        description="create or update a product on the sales channel or catalog",
    ),
    Handler(
        type="product.delete",
        payload=DeletePayload,
        func=delete_product,
        queue="blocking",
        description="delete a product from the sales channel or catalog",
    ),
)
