"""The example plug-in: installed as a package, found through its entry point, run by the daemon."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError
from s2s_stock import StockPayload, update_stock

from common.clients import ClientConfig
from daemon.broker.producer import Producer
from daemon.settings import Settings
from handlers import ENTRY_POINT_GROUP, load_handlers
from handlers.base import Item
from handlers.context import HandlerContext
from handlers.errors import PermanentError, TransientError
from tests.support import broker, running, settings_for, unique_prefix

PLUGIN = Path(__file__).resolve().parent.parent
TOKEN = "stock-token-SECRET"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plug-in installed with pip into a folder of its own (built from a copy of its source)."""
    source = tmp_path_factory.mktemp("source") / "plugin"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("tests", "*.egg-info", "build"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True, timeout=120)
    return target


@pytest.fixture
def on_path(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The installed plug-in visible to importlib.metadata, as in a real environment."""
    monkeypatch.syspath_prepend(str(installed))
    return installed


class Channel:
    """A sales channel that records stock updates and answers `status` with `body`."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[tuple[str, str, bytes, str]] = []
        self.status, self.body = 200, "{}"

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.raw_path, await request.read(),
                          request.headers.get("Authorization", "")))
        return web.Response(status=self.status, text=self.body, content_type="application/json")


@pytest.fixture
async def channel() -> AsyncIterator[Channel]:
    fake = Channel()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def ctx(channel: Channel) -> AsyncIterator[HandlerContext]:
    clients = {
        "acme": ClientConfig.model_validate(
            {"channel": {"base_url": f"{channel.url}/api", "token": TOKEN}}),
        "m2": ClientConfig.model_validate(
            {"channel": {"kind": "magento2", "base_url": channel.url}}),
    }
    async with aiohttp.ClientSession() as session:
        yield HandlerContext(lambda: clients, session, default_timeout=5.0, settings=Settings())


async def update(ctx: HandlerContext, sku: str = "A/1", client: str = "acme") -> None:
    item = Item("m-1", "stock.update", client, StockPayload(sku=sku, quantity=7), "blocking")
    await update_stock(item, ctx)


def test_the_installed_package_declares_its_entry_point(on_path: Path):
    """pip installs the entry point in the `s2s_queue.handlers` group."""
    [ep] = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "stock"]
    assert ep.value == "s2s_stock:HANDLERS"
    assert ep.dist is not None
    assert ep.dist.name == "s2s-stock-example"


def test_the_registry_loads_the_plugin_beside_the_builtins(on_path: Path):
    """`load_handlers()` finds `stock.update` and keeps every builtin."""
    registry = load_handlers()
    assert registry["stock.update"].func is update_stock
    assert {"product.sync", "image.fetch", "notification.webhook"} <= set(registry)


async def test_a_stock_update_puts_the_quantity(channel: Channel, ctx):
    """`PUT {base_url}/stock/{sku}` with the quantity, the SKU escaped, the token sent."""
    await update(ctx)
    [(method, path, body, auth)] = channel.seen
    assert (method, path, orjson.loads(body), auth) == (
        "PUT", "/api/stock/A%2F1", {"quantity": 7}, f"Bearer {TOKEN}")


async def test_a_busy_channel_is_transient(channel: Channel, ctx):
    """The connector's rule applies to plug-ins too."""
    channel.status, channel.body = 503, "later"
    with pytest.raises(TransientError) as info:
        await update(ctx)
    assert str(info.value) == "PUT /api/stock/A%2F1 → HTTP 503: later"


async def test_a_refused_update_is_permanent(channel: Channel, ctx):
    """A 422 quotes the status and body; a Magento channel is refused before any request."""
    channel.status, channel.body = 422, '{"error": "unknown sku"}'
    with pytest.raises(PermanentError) as info:
        await update(ctx)
    assert str(info.value) == 'PUT /api/stock/A%2F1 → HTTP 422: {"error": "unknown sku"}'
    with pytest.raises(PermanentError, match="generic HTTP API only"):
        await update(ctx, client="m2")
    assert len(channel.seen) == 1


def test_a_negative_quantity_is_invalid():
    """Payload validation names the field."""
    with pytest.raises(ValidationError, match="quantity"):
        StockPayload(sku="A", quantity=-1)


async def test_the_daemon_runs_plugin_items(on_path: Path, channel: Channel, tmp_path,
                                           request: pytest.FixtureRequest):
    """Published to the broker, a `stock.update` item is run by the daemon's plug-in handler."""
    prefix = unique_prefix(request.node.nodeid)
    clients = tmp_path / "clients.toml"
    clients.write_text(f'[clients.acme.channel]\nbase_url = "{channel.url}/api"\n')
    async with broker(prefix) as amqp, running(settings_for(prefix, tmp_path,
                                                            clients_file=clients)):
        await Producer(amqp.connection, amqp.topo).publish(
            "acme", "stock.update", {"sku": "B-2", "quantity": 3}, message_id="s-1")
        await amqp.wait_event("item.succeeded", "acme")
    assert [(m, p) for m, p, _, _ in channel.seen] == [("PUT", "/api/stock/B-2")]
