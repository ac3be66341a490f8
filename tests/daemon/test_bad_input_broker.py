"""Bad input on a blocking queue parks the client with an error naming the problem (SPEC §3)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import Broker, running, settings_for, wait_until

pytestmark = pytest.mark.timeout(60)

GOOD: dict[str, Any] = {
    "body": b'{"sku": "S1", "product": {}}', "content_type": "application/json",
    "message_id": "m1", "type": "product.sync", "headers": {"client_id": "acme"},
}

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("no message_id", {"message_id": None}, "message has no message_id property"),
    ("empty message_id", {"message_id": ""}, "message has no message_id property"),
    ("no type", {"type": None}, "message has no type property"),
    ("unknown type", {"type": "product.teleport"},
     "unknown type 'product.teleport'; known types: fulfillment.add, image.fetch, image.sync, "
     "notification.email, notification.webhook, order.add_to_source, product.delete, "
     "product.sync, system.noop"),
    ("wrong content type", {"content_type": "text/plain"},
     "content_type is 'text/plain', expected 'application/json'"),
    ("no client header", {"headers": {}}, "message has no client_id header"),
    ("client header for someone else", {"headers": {"client_id": "globex"}},
     "client_id header 'globex' does not match the client 'acme'"),
    ("body not JSON", {"body": b"{sku: S1"}, "body is not valid JSON: "),
    ("body not an object", {"body": b'["S1"]'}, "body is not a JSON object"),
    ("payload misses a field", {"body": b'{"product": {}}'},
     "payload is not valid for product.sync: sku: Field required"),
    ("payload has an unknown field", {"body": b'{"sku": "S1", "product": {}, "colour": 1}'},
     "payload is not valid for product.sync: colour: Extra inputs are not permitted"),
    ("body too large", {"body": b'{"sku": "' + b"x" * 2000 + b'", "product": {}}'},
     "body is 2026 bytes, over the limit of 1024 (S2SQ_MAX_BODY_BYTES)"),
]


@pytest.mark.parametrize(("case", "change", "error"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_parks_the_client_with_the_problem_named_and_loses_nothing(
    prefix, tmp_path, amqp: Broker, case, change, error
):
    """The bad item parks acme with the exact reason; skip removes it and the next item runs."""
    fields = {**GOOD, **change}
    properties = {k: v for k, v in fields.items() if k != "body" and v is not None}
    settings = settings_for(prefix, tmp_path, max_body_bytes=1024)
    async with running(settings) as sup:
        await amqp.control(action="register", client_id="acme")
        await amqp.publish_raw(fields["body"], "acme", **properties)
        await amqp.publish("acme", type_="system.noop", payload={}, message_id="after")
        [parked] = await amqp.wait_event("client.parked", "acme")
        assert sup.consumers["acme"].state == "parked"
        assert amqp.named("item.succeeded") == []
        skipped = await amqp.control(action="skip", client_id="acme", reason="bad input")
        await amqp.wait_event("item.succeeded", "acme")
    assert parked["error"].startswith(error)
    if not error.endswith(": "):
        assert parked["error"] == error
    assert skipped["ok"] is True
    [archived] = await amqp.queue_messages(amqp.topo.archive)
    assert archived.body == fields["body"]
    await wait_until(lambda: amqp.named("item.succeeded", "acme")[0]["message_id"] == "after",
                     1, "the next item to run")
