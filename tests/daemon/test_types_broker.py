"""Every shipped instruction type through the broker and the daemon, against real loopback peers."""

from __future__ import annotations

import hashlib

import pytest

from tests.peers import (
    MAGENTO_TOKEN,
    FakeMagento,
    ImageHost,
    png,
)
from tests.sinks import HOOK_SECRET, HookSink, MailSink
from tests.support import Broker, running, settings_for, wait_until

pytestmark = pytest.mark.timeout(90)


def settings(prefix, tmp_path, magento: FakeMagento, hooks: HookSink, smtp: MailSink,
             images: ImageHost | None = None):
    """m2 allows the loopback image host by its address and port; named, by its name."""
    image_host = images.url.removeprefix("http://") if images else "127.0.0.1"
    path = tmp_path / "clients.toml"
    path.write_text(f"""
[clients.named]
allowed_image_hosts = ["{image_host.replace("127.0.0.1", "localhost")}"]

[clients.m2]
webhook_url = "{hooks.url}/m2"
webhook_secret = "{HOOK_SECRET}"
allowed_image_hosts = ["{image_host}"]

[clients.m2.channel]
kind = "magento2"
base_url = "{magento.url}"
token = "{MAGENTO_TOKEN}"
""")
    return settings_for(prefix, tmp_path, clients_file=path, nonblocking_retry_delays="0.3",
                        **smtp.settings())


async def succeeded(amqp: Broker, client: str, *message_ids: str) -> None:
    def done() -> bool:
        return {e["message_id"] for e in amqp.named("item.succeeded", client)} >= set(message_ids)

    await wait_until(done, 30, f"{message_ids} to succeed (events: {amqp.events})")


async def test_every_type_runs_through_the_daemon(prefix, tmp_path, amqp: Broker, magento,
                                                 images: ImageHost, hooks: HookSink, smtp):
    """Products and images on Magento, images on disk, a mail and a signed webhook."""
    url = f"{images.url}/chair.png"
    async with running(settings(prefix, tmp_path, magento, hooks, smtp, images)):
        await amqp.publish("m2", "S-1", payload={"sku": "S-1", "product": {"name": "Stool"}})
        await amqp.publish("m2", "I-1", type_="image.sync", payload={
            "sku": "S-1", "image_id": "main", "action": "upsert", "url": url})
        await amqp.publish("m2", "F-1", type_="image.fetch", payload={"sku": "S/1", "urls": [url]})
        await amqp.publish("m2", "N-0", type_="system.noop", payload={})
        assert amqp.producer is not None
        await amqp.producer.publish("m2", "notification.email", {
            "to": ["buyer@example.com"], "subject": "Shipped", "text": "On its way."},
            message_id="E-1", queue="nonblocking")
        await amqp.producer.publish("m2", "notification.webhook", {
            "event": "order.shipped", "data": {"order": "SO-1"}},
            message_id="W-1", queue="nonblocking")
        await succeeded(amqp, "m2", "S-1", "I-1", "F-1", "N-0", "E-1", "W-1")
        await amqp.publish("m2", "D-1", type_="product.delete", payload={"sku": "S-1"})
        await succeeded(amqp, "m2", "D-1")
    assert [e["file"] for e in magento.entries("S-1")] == ["/s/2/s2s_main_img.png"]
    assert magento.products == {}
    stored = tmp_path / "images" / "m2" / "S%2F1" / f"{hashlib.sha256(png()).hexdigest()}.png"
    assert stored.read_bytes() == png()
    assert [(m.rcpt, m.subject) for m in smtp.mails] == [(["buyer@example.com"], "Shipped")]
    [hook] = hooks.events("order.shipped", "m2")
    assert hook == {"event": "order.shipped", "client_id": "m2", "message_id": "W-1",
                    "data": {"order": "SO-1"}}
    assert all(h.signed for h in hooks.hooks)


async def test_a_forbidden_image_host_parks_the_client_saying_why(
    prefix, tmp_path, amqp: Broker, magento, images: ImageHost, hooks: HookSink, smtp
):
    """A permanent handler error parks at once with the exact error; nothing is fetched."""
    async with running(settings(prefix, tmp_path, magento, hooks, smtp, images)):
        await amqp.publish("m2", "F-2", type_="image.fetch", payload={
            "sku": "S-1", "urls": [f"{images.forbidden_url}/chair.png"]})
        [parked] = await amqp.wait_event("client.parked", "m2")
    assert parked["error"] == (
        f"image URL {images.forbidden_url}/chair.png refused: host 'localhost' is neither the "
        f"client's source host nor in its allowed_image_hosts ({images.url.removeprefix('http://')})"
    )
    assert images.hits == []


async def test_an_allowed_name_that_resolves_to_loopback_parks_the_client_saying_why(
    prefix, tmp_path, amqp: Broker, magento, images: ImageHost, hooks: HookSink, smtp
):
    """`localhost:<port>` is allowed by name, but resolves to a loopback address: refused for
    good (parked), and the image host never sees a request."""
    url = f"{images.forbidden_url}/chair.png"
    async with running(settings(prefix, tmp_path, magento, hooks, smtp, images)):
        await amqp.publish("named", "F-3", type_="image.fetch",
                           payload={"sku": "S-1", "urls": [url]})
        [parked] = await amqp.wait_event("client.parked", "named")
    assert parked["error"] in {
        f"image URL {url} refused: host 'localhost' resolves to {address}, a loopback address "
        "(only an allowed_image_hosts entry that is the address itself allows one)"
        for address in ("127.0.0.1", "::1")}
    assert images.hits == []


async def test_a_bad_email_payload_fails_at_once_naming_the_field(
    prefix, tmp_path, amqp: Broker, magento, hooks: HookSink, smtp: MailSink
):
    """Bad input on the non-blocking queue goes straight to failed, no retries."""
    async with running(settings(prefix, tmp_path, magento, hooks, smtp)):
        await amqp.publish("m2", "N-1", type_="system.noop", payload={})
        assert amqp.producer is not None
        await amqp.producer.publish("m2", "notification.email", {
            "to": ["nobody"], "subject": "x", "text": "y"}, message_id="E-2", queue="nonblocking")
        [failed] = await amqp.wait_event("item.failed", "m2")
    assert failed["final"] is True
    assert failed["error"] == (
        "payload is not valid for notification.email: to.0: each entry must be an "
        "email address like ops@acme.example"
    )
    assert smtp.mails == []
