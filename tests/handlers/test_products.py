"""product.sync and product.delete against a fake sales channel, through the handler context."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from common.clients import ClientConfig
from daemon.core.items import describe_payload_error
from daemon.settings import Settings
from handlers.context import HandlerContext
from handlers.errors import HandlerError, PermanentError, TransientError
from handlers.products import DeletePayload, SyncPayload, delete_product, sync_product

from .conftest import MESSAGE_ID, TOKEN, FakeChannel, Reply, make_item

PRODUCT = {"name": "Blue mug", "price": "9.90", "tags": ["kitchen", "blue"], "stock": 3}


async def sync(ctx: HandlerContext, sku: str = "ABC-1", **fields: object) -> None:
    payload = SyncPayload.model_validate({"sku": sku, "product": PRODUCT, **fields})
    await sync_product(make_item("product.sync", payload), ctx)


async def delete(ctx: HandlerContext, sku: str = "ABC-1", **fields: object) -> None:
    payload = DeletePayload.model_validate({"sku": sku, **fields})
    await delete_product(make_item("product.delete", payload), ctx)


async def test_product_sync_puts_the_product_to_the_channel(channel: FakeChannel, ctx):
    """One PUT to {base_url}/products/{sku}, the product as JSON body, with every header."""
    await sync(ctx)
    request = channel.last
    assert len(channel.requests) == 1
    assert request.method == "PUT"
    assert request.raw_path == "/api/products/ABC-1"
    assert orjson.loads(request.body) == PRODUCT
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Idempotency-Key"] == MESSAGE_ID
    assert request.headers["X-S2S-Client"] == "acme"
    assert request.headers["Content-Type"] == "application/json"


async def test_product_sync_escapes_slashes_spaces_and_unicode_in_the_sku(channel, ctx):
    """The SKU stays one path segment whatever it contains."""
    await sync(ctx, sku="mugs/blue mug é☕")
    assert channel.last.raw_path == "/api/products/mugs%2Fblue%20mug%20%C3%A9%E2%98%95"


async def test_product_sync_to_the_catalog_uses_the_catalog_connection(channel, ctx):
    """`target = "catalog"` goes to the catalog's base_url, without the channel's token."""
    await sync(ctx, target="catalog")
    assert channel.last.raw_path == "/catalog/products/ABC-1"
    assert "Authorization" not in channel.last.headers


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_product_sync_succeeds_on_any_2xx(channel, ctx, status):
    """Created, updated or no content: all mean done."""
    channel.reply = Reply(status=status, body="" if status == 204 else '{"ok": true}')
    await sync(ctx)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_product_sync_is_transient_when_the_channel_is_busy_or_down(channel, ctx, status):
    """408, 429 and 5xx are retried later, and the message quotes the status and body."""
    channel.reply = Reply(status=status, body="try again later")
    with pytest.raises(TransientError) as info:
        await sync(ctx)
    assert str(info.value) == f"PUT /api/products/ABC-1 → HTTP {status}: try again later"


async def test_product_sync_is_permanent_when_the_channel_refuses_the_product(channel, ctx):
    """A 422 parks the client with the status and the start of the body in the error."""
    channel.reply = Reply(status=422, body='{"message":"sku invalid"}')
    with pytest.raises(PermanentError) as info:
        await sync(ctx)
    assert str(info.value) == 'PUT /api/products/ABC-1 → HTTP 422: {"message":"sku invalid"}'


async def test_a_long_error_body_is_cut_to_200_characters(channel, ctx):
    """A whole HTML error page is not pasted into events and emails."""
    page = "<html>\n  <body>" + "Internal error. " * 1000 + "</body></html>"
    channel.reply = Reply(status=400, body=page, content_type="text/html")
    with pytest.raises(PermanentError) as info:
        await sync(ctx)
    quoted = str(info.value).split("→ HTTP 400: ", 1)[1]
    assert quoted == " ".join(page.split())[:200] + "…"


async def test_product_sync_is_transient_when_the_channel_is_unreachable(
    clients, session, closed_port
):
    """Connection refused is retried later."""
    conn = clients["acme"].channel
    assert conn is not None
    moved_conn = conn.model_copy(update={"base_url": f"http://127.0.0.1:{closed_port}"})
    moved = {"acme": ClientConfig(channel=moved_conn)}
    ctx = HandlerContext(lambda: moved, session, default_timeout=5.0, settings=Settings())
    with pytest.raises(TransientError, match="connection refused"):
        await sync(ctx)


async def test_product_sync_is_transient_when_the_channel_is_too_slow(channel, clients, session):
    """A channel slower than the request timeout is a transient failure."""
    channel.reply = Reply(delay=30.0)
    ctx = HandlerContext(lambda: clients, session, default_timeout=0.2, settings=Settings())
    with pytest.raises(TransientError, match=r"failed: timed out after 0\.2 s$"):
        await sync(ctx)


async def test_product_delete_sends_a_delete_without_body(channel, ctx):
    """One DELETE to {base_url}/products/{sku}."""
    await delete(ctx, sku="A/1")
    assert channel.last.method == "DELETE"
    assert channel.last.raw_path == "/api/products/A%2F1"
    assert channel.last.body == b""
    assert channel.last.headers["Idempotency-Key"] == MESSAGE_ID


@pytest.mark.parametrize("status", [404, 410])
async def test_product_delete_of_a_product_already_gone_succeeds(channel, ctx, status):
    """Deleting what is not there is done already: the delete is idempotent."""
    channel.reply = Reply(status=status, body='{"message":"not found"}')
    await delete(ctx)


async def test_product_delete_fails_like_any_request_otherwise(channel, ctx):
    """Other errors are not swallowed."""
    channel.reply = Reply(status=403, body="forbidden")
    with pytest.raises(PermanentError, match=r"^DELETE /api/products/ABC-1 → HTTP 403: forbidden$"):
        await delete(ctx)


async def test_a_client_without_the_section_fails_permanently_naming_it(session):
    """The error names the missing table so the operator knows what to add."""
    ctx = HandlerContext(lambda: {"acme": ClientConfig()}, session, settings=Settings())
    with pytest.raises(PermanentError) as info:
        await sync(ctx)
    assert (
        str(info.value) == "client 'acme' has no [clients.acme.channel] section in the clients file"
    )


async def test_a_client_missing_from_the_clients_file_fails_permanently(ctx):
    """An unknown client has no connections at all, and the error says why."""
    payload = SyncPayload(sku="A", product={})
    with pytest.raises(PermanentError) as info:
        await sync_product(make_item("product.sync", payload, client_id="ghost"), ctx)
    assert str(info.value) == (
        "client 'ghost' is not in the clients file, so it has no [clients.ghost.channel] section"
    )


async def test_the_token_never_appears_in_an_error(channel, ctx, closed_port):
    """Whatever goes wrong, even a body echoing the token, the message does not show it."""
    errors: list[HandlerError] = []
    for reply in [
        Reply(status=401, body=f'{{"error": "bad token {TOKEN}"}}'),
        Reply(status=503, body=f"Authorization: Bearer {TOKEN}"),
        Reply(status=422, body="x" * 500),
    ]:
        channel.reply = reply
        with pytest.raises(HandlerError) as info:
            await sync(ctx)
        errors.append(info.value)
    assert len(errors) == 3
    for error in errors:
        assert TOKEN not in str(error)
        assert TOKEN not in repr(error)


def test_a_sku_must_be_1_to_255_characters():
    """An empty or overlong SKU fails validation before any request is made."""
    for sku in ["", "x" * 256]:
        with pytest.raises(ValueError, match="sku"):
            SyncPayload(sku=sku, product={})
    assert SyncPayload(sku="x" * 255, product={}).target == "channel"


def test_payloads_refuse_unknown_fields():
    """A misspelt field is an invalid item, not silently dropped."""
    with pytest.raises(ValueError, match="trget"):
        DeletePayload.model_validate({"sku": "A", "trget": "catalog"})


def test_a_product_naming_another_sku_is_refused():
    """`product.sku`, when present, must be the item's `sku`: which one was meant is unclear."""
    body = b'{"sku": "A-1", "product": {"sku": "B-2"}}'
    with pytest.raises(ValidationError) as info:
        SyncPayload.model_validate_json(body)
    assert describe_payload_error("product.sync", info.value) == (
        "payload is not valid for product.sync: product: its sku 'B-2' is not "
        "the item's sku 'A-1'"
    )
    assert SyncPayload.model_validate({"sku": "A-1", "product": {"sku": "A-1"}}).sku == "A-1"
