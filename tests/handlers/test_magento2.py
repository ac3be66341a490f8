"""The Magento 2 channel: products and product images against a fake Magento REST API."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from common.clients import ClientConfig
from daemon.settings import Settings
from handlers.connectors.magento2 import Magento2Connector, describe_error, is_ours, render_message
from handlers.context import HandlerContext
from handlers.errors import HandlerError, PermanentError, TransientError
from handlers.images import SyncImagePayload, sync_image
from handlers.products import DeletePayload, SyncPayload, delete_product, sync_product
from tests.peers import MAGENTO_TOKEN, FakeMagento, ImageHost, png

from .conftest import make_item

CHAIR = {"name": "Chair", "price": 49.0, "attribute_set_id": 4, "type_id": "simple"}


def magento_client(magento: FakeMagento, image_host: str,
                   token: str = MAGENTO_TOKEN) -> ClientConfig:
    return ClientConfig.model_validate({
        "allowed_image_hosts": [image_host],
        "channel": {"kind": "magento2", "base_url": magento.url, "token": token},
        "catalog": {"kind": "magento2", "base_url": magento.url, "token": token},
    })


@pytest.fixture
def image_host(images: ImageHost) -> str:
    """The loopback image host as an allowed_image_hosts entry: the address and its port."""
    return images.url.removeprefix("http://")


@pytest.fixture
def ctx(magento: FakeMagento, image_host: str, session: aiohttp.ClientSession) -> HandlerContext:
    clients = {"acme": magento_client(magento, image_host),
               "wrong": magento_client(magento, image_host, "nope")}
    return HandlerContext(lambda: clients, session, default_timeout=5.0, settings=Settings())


async def sync(ctx: HandlerContext, sku: str = "ABC-1", client: str = "acme", **fields) -> None:
    payload = SyncPayload.model_validate({"sku": sku, "product": CHAIR, **fields})
    await sync_product(make_item("product.sync", payload, client), ctx)


async def delete(ctx: HandlerContext, sku: str = "ABC-1") -> None:
    await delete_product(make_item("product.delete", DeletePayload(sku=sku)), ctx)


async def image(ctx: HandlerContext, **fields) -> None:
    values = {"sku": "ABC-1", "image_id": "front", "action": "upsert", **fields}
    await sync_image(make_item("image.sync", SyncImagePayload.model_validate(values)), ctx)


def test_a_magento2_connection_gets_the_magento_connector(ctx):
    """`kind = "magento2"` picks the Magento connector; its repr shows no token."""
    api = ctx.connector("acme", "channel")
    assert isinstance(api, Magento2Connector)
    assert MAGENTO_TOKEN not in repr(api)


async def test_product_sync_puts_the_product_wrapped_with_its_sku(magento: FakeMagento, ctx):
    """`PUT /rest/V1/products/{sku}` with `{"product": ...}`, the SKU filled in."""
    await sync(ctx)
    assert magento.requests == [("PUT", "/rest/V1/products/ABC-1")]
    assert magento.products["ABC-1"] == {**CHAIR, "sku": "ABC-1"}


async def test_product_sync_escapes_the_sku_in_the_path(magento: FakeMagento, ctx):
    """A SKU with a slash and a space stays one path segment."""
    await sync(ctx, sku="mugs/blue 1")
    assert magento.requests == [("PUT", "/rest/V1/products/mugs%2Fblue%201")]
    assert "mugs/blue 1" in magento.products


async def test_product_sync_to_a_magento_catalog(magento: FakeMagento, ctx):
    """`target = "catalog"` with a magento2 catalog goes through the same connector."""
    await sync(ctx, target="catalog")
    assert magento.products["ABC-1"]["name"] == "Chair"


async def test_magento_refusing_the_product_is_permanent_with_its_sentence(magento, ctx):
    """Magento's `%1` message comes back filled in, after the status."""
    with pytest.raises(PermanentError) as info:
        await sync(ctx, product={"price": 1})
    assert str(info.value) == (
        'PUT /rest/V1/products/ABC-1 → HTTP 400: The "name" attribute value is empty. '
        "Set the attribute and try again."
    )


async def test_a_wrong_token_is_permanent_and_never_shown(magento, ctx):
    """401 with Magento's named parameter filled in; the token is not in the message."""
    with pytest.raises(PermanentError) as info:
        await sync(ctx, client="wrong")
    assert str(info.value) == (
        "PUT /rest/V1/products/ABC-1 → HTTP 401: The consumer isn't authorized to access "
        "Magento_Catalog::products."
    )
    assert "nope" not in str(info.value)


async def test_magento_down_is_transient(magento: FakeMagento, ctx):
    """A 503 page from the web server in front of Magento is retried later."""
    magento.fail_next.append(web.Response(status=503, text="<h1>Service Unavailable</h1>",
                                          content_type="text/html"))
    with pytest.raises(TransientError) as info:
        await sync(ctx)
    assert str(info.value) == "PUT /rest/V1/products/ABC-1 → HTTP 503: <h1>Service Unavailable</h1>"


async def test_product_delete_removes_it_and_a_missing_one_counts_as_done(magento, ctx):
    """`DELETE /rest/V1/products/{sku}`; Magento's 404 means gone already."""
    await sync(ctx)
    await delete(ctx)
    assert magento.products == {}
    await delete(ctx)
    assert magento.requests[-2:] == [("DELETE", "/rest/V1/products/ABC-1")] * 2


async def test_product_delete_failing_is_transient_or_permanent_by_status(magento, ctx):
    """500 is retried later; 400 parks, with Magento's message."""
    magento.fail_next.append(web.json_response({"message": "Internal Error."}, status=500))
    with pytest.raises(TransientError, match=r"^DELETE /rest/V1/products/ABC-1 → HTTP 500: "
                       r"Internal Error\.$"):
        await delete(ctx)
    magento.fail_next.append(web.json_response(
        {"message": 'Cannot delete "%1": it is in use.', "parameters": ["ABC-1"]}, status=400))
    with pytest.raises(PermanentError) as info:
        await delete(ctx)
    assert str(info.value) == (
        'DELETE /rest/V1/products/ABC-1 → HTTP 400: Cannot delete "ABC-1": it is in use.'
    )


async def test_image_upsert_adds_a_media_entry_with_the_image_bytes(magento, images, ctx):
    """The image is downloaded and sent base64 with its type, name, label and roles."""
    await sync(ctx)
    await image(ctx, url=f"{images.url}/chair.png", label="Front", position=1, roles=["image"])
    [entry] = magento.entries("ABC-1")
    assert entry["file"] == "/s/2/s2s_front_img.png"
    assert magento.files[entry["file"]] == png()
    assert (entry["mime"], entry["label"], entry["position"], entry["types"]) == (
        "image/png", "Front", 1, ["image"])
    assert entry["media_type"] == "image"


async def test_image_upsert_twice_leaves_one_entry_for_the_image(magento, images, ctx):
    """A re-run or a replacement adds the new entry, then removes the older one."""
    await sync(ctx)
    await image(ctx, url=f"{images.url}/chair.png")
    await image(ctx, image_id="back", url=f"{images.url}/chair.png")
    await image(ctx, url=f"{images.url}/chair.png")
    files = sorted(e["file"] for e in magento.entries("ABC-1"))
    assert files == ["/s/2/s2s_back_img.png", "/s/2/s2s_front_img_1.png"]


async def test_image_delete_removes_only_that_image(magento, images, ctx):
    """Every entry of the image id goes; other images stay; nothing left is done too."""
    await sync(ctx)
    await image(ctx, url=f"{images.url}/chair.png")
    await image(ctx, image_id="back", url=f"{images.url}/chair.png")
    await image(ctx, action="delete")
    assert [e["file"] for e in magento.entries("ABC-1")] == ["/s/2/s2s_back_img.png"]
    await image(ctx, action="delete")
    await image(ctx, sku="NO-SUCH", action="delete")


async def test_image_upsert_for_a_missing_product_is_permanent(magento, images, ctx):
    """Magento's 404 on the media list names the problem."""
    with pytest.raises(PermanentError) as info:
        await image(ctx, url=f"{images.url}/chair.png")
    assert str(info.value) == (
        "GET /rest/V1/products/ABC-1/media → HTTP 404: The product that was requested doesn't "
        "exist. Verify the product and try again."
    )


async def test_image_upsert_from_a_forbidden_host_never_reaches_magento(
    magento, images, image_host, ctx
):
    """The host check comes first: nothing is downloaded or sent."""
    with pytest.raises(PermanentError) as info:
        await image(ctx, url=f"{images.forbidden_url}/chair.png")
    assert str(info.value) == (
        f"image URL {images.forbidden_url}/chair.png refused: host 'localhost' is neither the "
        f"client's source host nor in its allowed_image_hosts ({image_host})"
    )
    assert magento.requests == []
    assert images.hits == []


async def test_image_upsert_is_transient_when_the_image_host_is_busy(magento, images, ctx):
    """A 503 from the image host is retried later."""
    await sync(ctx)
    images.status_next.append(503)
    with pytest.raises(TransientError) as info:
        await image(ctx, url=f"{images.url}/chair.png")
    assert str(info.value) == "GET /chair.png → HTTP 503: busy, try later"


async def test_no_magento_error_shows_the_token(magento: FakeMagento, ctx):
    """Even a body echoing the token is blanked."""
    magento.fail_next.append(web.json_response(
        {"message": "Bad token %1", "parameters": [MAGENTO_TOKEN]}, status=400))
    with pytest.raises(HandlerError) as info:
        await sync(ctx)
    assert str(info.value) == "PUT /rest/V1/products/ABC-1 → HTTP 400: Bad token ***"


@pytest.mark.parametrize(
    ("message", "parameters", "text"),
    [
        ("The %1 of %2 is wrong", ["price", "ABC"], "The price of ABC is wrong"),
        ("Item %1 and %10", ["a"] + ["x"] * 8 + ["j"], "Item a and j"),
        ("Missing %3", ["a"], "Missing %3"),
        ('No such entity with %fieldName = %fieldValue', {"fieldName": "sku",
         "fieldValue": "A-1"}, "No such entity with sku = A-1"),
        ("Plain", None, "Plain"),
    ],
)
def test_magento_messages_are_filled_in(message, parameters, text):
    """List parameters fill `%1`…, named ones `%name`; unknown placeholders stay."""
    assert render_message(message, parameters) == text


def test_a_magento_error_body_lists_every_error():
    """`errors` (a validation with several failures) are joined after the main message."""
    body = ('{"message": "Validation failed.", "errors": [{"message": "%1 is required", '
            '"parameters": ["name"]}, {"message": "price must be positive"}], "trace": "..."}')
    assert describe_error(body) == "Validation failed.; name is required; price must be positive"
    assert describe_error("<html>oops</html>") == "<html>oops</html>"
    assert describe_error('["not", "magento"]') == '["not", "magento"]'


@pytest.mark.parametrize(
    ("file", "image_id", "ours"),
    [
        ("/s/2/s2s_front_img.png", "front", True),
        ("/s/2/s2s_front_img_3.jpg", "front", True),
        ("/S/2/S2S_FRONT_IMG.PNG", "front", True),
        ("/s/2/s2s_front_img.png", "fro", False),
        ("/s/2/s2s_a_1_img.png", "a", False),
        ("/s/2/s2s_a_img_1.png", "a_1", False),
        ("/c/h/chair.png", "front", False),
        (None, "front", False),
    ],
)
def test_our_media_entries_are_found_by_file_name(file, image_id, ours):
    """Magento's `_N` suffix is allowed; another image id never matches."""
    assert is_ours(file, image_id) is ours
