"""The daemon's outgoing HTTP calls, seen by a real loopback shop: nothing of one client's call
carries over to another's."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from tests.support import Broker, clients_toml, running, serve, settings_for, wait_until

pytestmark = pytest.mark.timeout(60)


async def test_a_cookie_one_clients_shop_sets_is_not_sent_on_another_clients_call(
    prefix, tmp_path: Path, amqp: Broker
):
    """The shop sets a cookie on acme's call; globex's call to the same host carries no Cookie."""
    seen: list[tuple[str, str | None]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.match_info["client"], request.headers.get("Cookie")))
        response = web.json_response({})
        response.set_cookie("shop_session", f"for-{request.match_info['client']}", path="/")
        return response

    app = web.Application()
    app.router.add_put("/{client}/products/{sku}", handle)
    async with serve(app) as url:
        # By name: aiohttp's cookie jar ignores cookies set by an IP address.
        shop_url = url.replace("127.0.0.1", "localhost")
        path = tmp_path / "clients.toml"
        path.write_text(clients_toml(shop_url, ["acme", "globex"]))
        async with running(settings_for(prefix, tmp_path, clients_file=path)):
            await amqp.publish("acme", "A-1")
            await amqp.wait_event("item.succeeded", "acme")
            await amqp.publish("globex", "G-1")
            await amqp.wait_event("item.succeeded", "globex")
            await amqp.publish("acme", "A-2")
            await wait_until(lambda: len(seen) == 3, 15, "three calls at the shop")
    assert seen == [("acme", None), ("globex", None), ("acme", None)]
