"""order.add_to_source and fulfillment.add against a fake back office."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from common.clients import ClientConfig
from handlers.context import HandlerContext
from handlers.errors import PermanentError, TransientError
from handlers.orders import FulfillmentPayload, OrderPayload, add_fulfillment, add_order

from .conftest import MESSAGE_ID, TOKEN, FakeChannel, Reply, make_item

ORDER = {"id": "SO-1001", "lines": [{"sku": "ABC-1", "qty": 2}], "total": "19.80"}


@pytest.fixture
def clients(channel: FakeChannel) -> dict[str, ClientConfig]:
    """acme has an ERP (source) and a warehouse; bare has neither."""
    return {
        "acme": ClientConfig.model_validate({
            "source": {"base_url": f"{channel.url}/erp", "token": TOKEN},
            "warehouse": {"base_url": f"{channel.url}/wms"},
        }),
        "bare": ClientConfig(),
    }


async def test_an_order_is_posted_to_the_source_with_every_header(channel: FakeChannel, ctx):
    """POST {source}/orders, the order as body, the message id as Idempotency-Key."""
    await add_order(make_item("order.add_to_source", OrderPayload(order=ORDER)), ctx)
    request = channel.last
    assert (request.method, request.raw_path) == ("POST", "/erp/orders")
    assert orjson.loads(request.body) == ORDER
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Idempotency-Key"] == MESSAGE_ID
    assert request.headers["X-S2S-Client"] == "acme"


async def test_a_fulfillment_is_posted_to_the_warehouse(channel: FakeChannel, ctx):
    """POST {warehouse}/fulfillments with the fulfillment as body."""
    fulfillment = {"id": "F-7", "order_id": "SO-1001"}
    await add_fulfillment(
        make_item("fulfillment.add", FulfillmentPayload(fulfillment=fulfillment)), ctx)
    assert (channel.last.method, channel.last.raw_path) == ("POST", "/wms/fulfillments")
    assert orjson.loads(channel.last.body) == fulfillment


@pytest.mark.parametrize(("status", "error"), [(503, TransientError), (429, TransientError),
                                               (422, PermanentError), (409, PermanentError)])
async def test_back_office_answers_are_classified(channel: FakeChannel, ctx, status, error):
    """5xx and 429 are worth retrying; other 4xx are not, and the error quotes the status."""
    channel.reply = Reply(status=status, body='{"error": "no"}')
    with pytest.raises(error) as info:
        await add_order(make_item("order.add_to_source", OrderPayload(order=ORDER)), ctx)
    assert str(info.value) == f'POST /erp/orders → HTTP {status}: {{"error": "no"}}'


async def test_a_client_without_a_warehouse_fails_naming_the_section(ctx: HandlerContext):
    """The missing [clients.bare.warehouse] section is named."""
    item = make_item("fulfillment.add", FulfillmentPayload(fulfillment={"id": 1}),
                     client_id="bare")
    with pytest.raises(PermanentError) as info:
        await add_fulfillment(item, ctx)
    assert str(info.value) == (
        "client 'bare' has no [clients.bare.warehouse] section in the clients file")


@pytest.mark.parametrize("payload", [{"order": {}}, {"order": {"id": ""}}, {"order": {"id": None}}])
def test_an_order_without_an_id_is_invalid(payload):
    """The order object must carry an id (SPEC section 7)."""
    with pytest.raises(ValidationError, match="needs an 'id'"):
        OrderPayload.model_validate(payload)
