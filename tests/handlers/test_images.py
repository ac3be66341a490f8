"""image.fetch and image.sync (generic HTTP channel) against a real loopback image host."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp
import orjson
import pytest
from pydantic import ValidationError
from yarl import URL

from common.clients import ClientConfig
from daemon.core.items import describe_payload_error
from daemon.settings import Settings
from handlers.connectors.images import address_kind, sniff, verify
from handlers.context import HandlerContext
from handlers.errors import PermanentError, TransientError
from handlers.images import (
    FetchImagesPayload,
    SyncImagePayload,
    fetch_images,
    folder_name,
    image_folder,
    sync_image,
)
from tests.peers import ImageHost, png

from .conftest import FakeChannel, Reply, make_item

LIMIT = 1000
NOT_ALLOWED = "is neither the client's source host nor in its allowed_image_hosts"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "images"


def port_of(images: ImageHost) -> int:
    """The image host's port: an unusual one, so clients name it with the loopback address."""
    port = URL(images.url).port
    assert port is not None
    return port


@pytest.fixture
def ctx(channel: FakeChannel, images: ImageHost, session: aiohttp.ClientSession, root: Path,
        closed_port: int):
    port = port_of(images)
    clients = {
        "acme": ClientConfig.model_validate({
            "allowed_image_hosts": [f"127.0.0.1:{port}"],  # the address itself: allowed
            "channel": {"base_url": f"{channel.url}/api"},
        }),
        "erp": ClientConfig.model_validate({"source": {"base_url": f"{images.url}/erp"}}),
        "bare": ClientConfig.model_validate({"channel": {"base_url": channel.url}}),
        "named": ClientConfig.model_validate({  # a name resolving to loopback: refused
            "allowed_image_hosts": [f"localhost:{port}", f"127.0.0.1:{port}"]}),
        "portless": ClientConfig.model_validate({"allowed_image_hosts": ["127.0.0.1"]}),
        "down": ClientConfig.model_validate({"allowed_image_hosts": [f"127.0.0.1:{closed_port}"]}),
    }
    settings = Settings(image_dir=root, image_max_bytes=LIMIT, _env_file=None)
    return HandlerContext(lambda: clients, session, default_timeout=5.0, settings=settings)


async def fetch(ctx: HandlerContext, *urls: str, sku: str = "ABC-1", client: str = "acme"):
    payload = FetchImagesPayload(sku=sku, urls=list(urls))
    await fetch_images(make_item("image.fetch", payload, client), ctx)


def stored(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


async def test_image_fetch_stores_the_image_by_content_hash(images: ImageHost, ctx, root):
    """`<image_dir>/<client>/<sku>/<sha256>.png`, the bytes as served, no temporary file left."""
    await fetch(ctx, f"{images.url}/chair.png")
    expected = root / "acme" / "ABC-1" / f"{hashlib.sha256(png()).hexdigest()}.png"
    assert stored(root) == [expected]
    assert expected.read_bytes() == png()


async def test_image_fetch_again_keeps_one_file(images: ImageHost, ctx, root):
    """A re-run (at-least-once delivery) finds the same file and stores nothing new."""
    await fetch(ctx, f"{images.url}/chair.png", f"{images.url}/hop.png")
    await fetch(ctx, f"{images.url}/chair.png")
    assert len(stored(root)) == 1
    assert images.hits == ["chair.png", "hop.png", "chair.png", "chair.png"]


async def test_the_source_host_is_allowed_without_a_list(images: ImageHost, ctx, root):
    """A client's `[source]` host may serve its images."""
    await fetch(ctx, f"{images.url}/chair.png", client="erp")
    assert [p.parent for p in stored(root)] == [root / "erp" / "ABC-1"]


async def test_a_host_not_allowed_is_refused_before_anything_is_fetched(images, ctx, root):
    """Every URL is checked first: the allowed one before it is not fetched either."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/chair.png", f"{images.forbidden_url}/chair.png")
    assert str(info.value) == (
        f"image URL {images.forbidden_url}/chair.png refused: host 'localhost' {NOT_ALLOWED} "
        f"(127.0.0.1:{port_of(images)})"
    )
    assert images.hits == []
    assert stored(root) == []


async def test_a_redirect_to_a_forbidden_host_is_refused(images: ImageHost, ctx, root):
    """Each hop is checked again; the forbidden one is never requested."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/away.png")
    assert str(info.value) == (
        f"image URL {images.url}/away.png redirects to {images.forbidden_url}/chair.png, "
        f"refused: host 'localhost' {NOT_ALLOWED} (127.0.0.1:{port_of(images)})"
    )
    assert images.hits == ["away.png"]


def loopback_refusal(url: str) -> set[str]:
    """The error for `localhost`, which resolves to 127.0.0.1 or ::1 first, by the system."""
    return {f"image URL {url} refused: host 'localhost' resolves to {address}, a loopback "
            "address (only an allowed_image_hosts entry that is the address itself allows one)"
            for address in ("127.0.0.1", "::1")}


async def test_a_name_that_resolves_to_loopback_is_refused_though_it_is_allowed(
    images: ImageHost, ctx, root
):
    """The name is allowed, but its address is checked after resolving: a name is never
    trusted to mean an internal address; only the address itself, named, is."""
    url = f"{images.forbidden_url}/chair.png"
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, url, client="named")
    assert str(info.value) in loopback_refusal(url)
    assert images.hits == []
    assert stored(root) == []
    await fetch(ctx, f"{images.url}/chair.png", client="named")  # the address, named: fetched
    assert images.hits == ["chair.png"]


async def test_a_redirect_to_a_name_that_resolves_to_loopback_is_refused(images, ctx):
    """A hop is resolved and checked like the first URL; it is never requested."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/away.png", client="named")
    assert str(info.value) in loopback_refusal(f"{images.forbidden_url}/chair.png")
    assert images.hits == ["away.png"]


async def test_a_port_other_than_80_or_443_is_refused_unless_the_entry_names_it(images, ctx):
    """`127.0.0.1` allows that address on 80 and 443 only; `127.0.0.1:8080` names a port."""
    port = port_of(images)
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/chair.png", client="portless")
    assert str(info.value) == (
        f"image URL {images.url}/chair.png refused: port {port} is not allowed: only 80 and "
        f"443, unless allowed_image_hosts names '127.0.0.1:{port}'"
    )
    assert images.hits == []


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"), ("2002:7f00:1::", "loopback"),
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"), ("::ffff:10.0.0.1", "private"),
        ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"),
        ("169.254.10.20", "link-local"), ("fe80::1%eth0", "link-local"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"), ("100.64.0.1", "non-public"),
        ("93.184.215.14", None), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", None),
    ],
)
def test_only_public_addresses_may_serve_images(address, kind):
    """Loopback, private, link-local (and the cloud metadata address), multicast, reserved and
    other non-public addresses, IPv4 inside IPv6 included, are named as such."""
    assert address_kind(address) == kind


async def test_a_redirect_loop_ends_after_five_hops(images: ImageHost, ctx):
    """Relative redirects are followed on the same host, but not for ever."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/loop.png")
    assert str(info.value) == f"image URL {images.url}/loop.png redirects more than 5 times"
    assert images.hits == ["loop.png"] * 6


async def test_a_client_without_image_hosts_fails_naming_what_to_add(images, ctx):
    """No source section and no allowed_image_hosts: nothing may be fetched."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/chair.png", client="bare")
    assert str(info.value) == (
        "client 'bare' has no image hosts: add allowed_image_hosts or a [clients.bare.source] "
        "section to the clients file"
    )


async def test_content_that_is_not_an_image_is_refused(images: ImageHost, ctx, root):
    """The bytes decide, not the Content-Type the server claims."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/notes.png")
    assert str(info.value) == (
        f"image {images.url}/notes.png is not a PNG, JPEG, GIF or WebP image "
        "(Content-Type: image/png)"
    )
    assert stored(root) == []


async def test_a_damaged_image_is_refused(images: ImageHost, ctx, root):
    """Right first bytes are not enough: the whole image must read as one."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/broken.png")
    assert str(info.value) == (
        f"image {images.url}/broken.png starts like image/png but is not a valid image: "
        "it cannot be read"
    )
    assert stored(root) == []


@pytest.mark.parametrize(
    ("data", "mime", "reason"),
    [
        (png()[:-20], "image/png", "Truncated File Read"),
        (png(), "image/gif", "it reads as image/png"),
    ],
)
def test_pillow_verifies_the_whole_image(data, mime, reason):
    """A truncated file, or one of another type than its first bytes said, is not accepted."""
    with pytest.raises(PermanentError) as info:
        verify(data, mime, "x")
    assert str(info.value) == f"image x starts like {mime} but is not a valid image: {reason}"
    verify(png(), "image/png", "x")


async def test_a_declared_oversized_image_is_refused_before_reading(images, ctx, root):
    """A Content-Length over S2SQ_IMAGE_MAX_BYTES stops at the headers."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/huge-declared.png")
    size = len(png()) + 5000
    assert str(info.value) == (
        f"image {images.url}/huge-declared.png is {size} bytes, over the limit of {LIMIT} "
        "(S2SQ_IMAGE_MAX_BYTES)"
    )
    assert stored(root) == []


async def test_a_streamed_oversized_image_is_cut_off_while_reading(images, ctx, root):
    """Without a Content-Length, counting the bytes as they arrive stops it."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/huge-streamed.png")
    assert str(info.value) == (
        f"image {images.url}/huge-streamed.png is over the limit of {LIMIT} bytes "
        "(S2SQ_IMAGE_MAX_BYTES)"
    )
    assert stored(root) == []


async def test_a_busy_image_host_is_transient(images: ImageHost, ctx):
    """503 is retried later, with the status and body quoted."""
    images.status_next.append(503)
    with pytest.raises(TransientError) as info:
        await fetch(ctx, f"{images.url}/chair.png")
    assert str(info.value) == "GET /chair.png → HTTP 503: busy, try later"


async def test_an_unreachable_image_host_is_transient(ctx, closed_port):
    """Connection refused is retried later."""
    with pytest.raises(TransientError) as info:
        await fetch(ctx, f"http://127.0.0.1:{closed_port}/chair.png", client="down")
    assert str(info.value) == (
        f"GET http://127.0.0.1:{closed_port}/chair.png failed: connection refused"
    )


async def test_a_missing_image_is_permanent(images: ImageHost, ctx):
    """404 will not get better by retrying."""
    with pytest.raises(PermanentError) as info:
        await fetch(ctx, f"{images.url}/gone.png")
    assert str(info.value) == "GET /gone.png → HTTP 404: no such image"


@pytest.mark.parametrize(
    "sku", ["..", ".", "../../etc", "a/../../b", "/abs/path", "..\\..\\win", ".hidden",
            "x" * 255, "ü/..%2F"],
)
async def test_no_sku_stores_outside_its_clients_folder(images, ctx, root, sku):
    """Whatever the SKU says, the file lands in one folder right under `<image_dir>/acme`."""
    await fetch(ctx, f"{images.url}/chair.png", sku=sku)
    [path] = stored(root)
    assert path.parent.parent == root / "acme"
    assert path.parent.name == folder_name(sku)
    assert not path.parent.name.startswith(".")


@pytest.mark.parametrize(
    ("sku", "name"),
    [("ABC-1", "ABC-1"), ("a/b", "a%2Fb"), ("..", "%2E."), (".x", "%2Ex"), ("a b", "a%20b"),
     ("nul\x00byte", "nul%00byte")],
)
def test_a_sku_becomes_one_escaped_folder_name(sku, name):
    """Slashes, spaces and leading dots are escaped; plain SKUs stay readable."""
    assert folder_name(sku) == name


def test_a_long_sku_gets_a_short_unique_folder_name(root):
    """Names stay under file-system limits, and two long SKUs never share a folder."""
    one, two = folder_name("é" * 255), folder_name("é" * 254 + "e")
    assert len(one.encode()) <= 200
    assert one != two
    assert image_folder(root, "acme", "é" * 255).parent == (root / "acme").resolve()


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (png()[:12], ("image/png", "png")),
        (b"\xff\xd8\xff\xe0\0\x10JFIF\0\1", ("image/jpeg", "jpg")),
        (b"GIF89a\1\0\1\0\0\0", ("image/gif", "gif")),
        (b"RIFF\0\0\0\0WEBPVP8 ", ("image/webp", "webp")),
        (b"<svg xmlns=", None),
        (b"<html>", None),
        (b"", None),
    ],
)
def test_images_are_recognised_by_their_first_bytes(head, kind):
    """PNG, JPEG, GIF and WebP are images; SVG, HTML and nothing are not."""
    assert sniff(head) == kind


# -- image.sync on a generic HTTP channel ------------------------------------------------


async def sync(ctx: HandlerContext, **fields) -> None:
    values = {"sku": "ABC-1", "image_id": "front", **fields}
    await sync_image(make_item("image.sync", SyncImagePayload.model_validate(values)), ctx)


async def test_image_sync_puts_the_url_to_the_channel(channel: FakeChannel, images, ctx):
    """`PUT {base_url}/products/{sku}/images/{image_id}` with `{"url": ...}`; nothing fetched."""
    url = f"{images.url}/chair.png"
    await sync(ctx, action="upsert", url=url)
    assert channel.last.method == "PUT"
    assert channel.last.raw_path == "/api/products/ABC-1/images/front"
    assert orjson.loads(channel.last.body) == {"url": url}
    assert images.hits == []


async def test_image_sync_sends_label_position_and_roles_when_given(channel, images, ctx):
    """The optional fields go along for channels that use them."""
    await sync(ctx, action="upsert", url=f"{images.url}/c.png", label="Front", position=2,
               roles=["image", "thumbnail"])
    assert orjson.loads(channel.last.body) == {"url": f"{images.url}/c.png", "label": "Front",
                                               "position": 2, "roles": ["image", "thumbnail"]}


async def test_image_sync_delete_and_a_missing_image_counts_as_done(channel, ctx):
    """`DELETE .../images/{image_id}`; 404 means gone already."""
    channel.reply = Reply(status=404, body="no such image")
    await sync(ctx, sku="a/b", action="delete")
    assert (channel.last.method, channel.last.raw_path) == ("DELETE",
                                                            "/api/products/a%2Fb/images/front")


async def test_image_sync_with_a_forbidden_url_never_reaches_the_channel(channel, images, ctx):
    """The channel must not be told to fetch from a host the client does not allow."""
    with pytest.raises(PermanentError, match=f"refused: host 'localhost' {NOT_ALLOWED}"):
        await sync(ctx, action="upsert", url=f"{images.forbidden_url}/chair.png")
    assert channel.requests == []


async def test_image_sync_is_transient_or_permanent_by_the_channels_status(channel, images, ctx):
    """503 is retried later; 422 parks, each quoting the body."""
    url = f"{images.url}/chair.png"
    channel.reply = Reply(status=503, body="maintenance")
    with pytest.raises(TransientError) as transient:
        await sync(ctx, action="upsert", url=url)
    assert str(transient.value) == "PUT /api/products/ABC-1/images/front → HTTP 503: maintenance"
    channel.reply = Reply(status=422, body='{"error":"image too small"}')
    with pytest.raises(PermanentError) as permanent:
        await sync(ctx, action="upsert", url=url)
    assert str(permanent.value) == (
        'PUT /api/products/ABC-1/images/front → HTTP 422: {"error":"image too small"}'
    )


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"sku": "A", "image_id": "f", "action": "upsert"}, "url\n  Value error, required when"),
        ({"sku": "A", "image_id": "a/b", "action": "delete"}, "image_id"),
        ({"sku": "A", "image_id": "f", "action": "replace"}, "action"),
        ({"sku": "A", "image_id": "f", "action": "upsert", "url": "ftp://x/y"}, "url"),
    ],
)
def test_image_sync_payloads_are_checked(payload, error):
    """Bad payloads fail validation naming the field."""
    with pytest.raises(ValidationError, match=error):
        SyncImagePayload.model_validate(payload)


def test_an_upsert_without_url_is_bad_input_naming_the_field():
    """The consumer's error reads as one plain line."""
    with pytest.raises(ValidationError) as info:
        SyncImagePayload.model_validate_json(b'{"sku": "A", "image_id": "f", "action": "upsert"}')
    assert describe_payload_error("image.sync", info.value) == (
        "payload is not valid for image.sync: url: required when action is 'upsert'"
    )


def test_image_fetch_needs_one_to_fifty_http_urls():
    """An empty list, too many URLs or a non-http URL is invalid."""
    for urls in ([], ["https://cdn.example/a.png"] * 51, ["file:///etc/passwd"]):
        with pytest.raises(ValidationError, match="urls"):
            FetchImagesPayload(sku="A", urls=urls)
