"""GET /api/v1/clients a page at a time (SPEC section 9) on a running daemon, and its depths.

A listing reads depths from the daemon's depth cache, which one task walks
in the background: these tests hold that walk at a gate to show that a
listing neither waits for it nor starts one.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest

from daemon.broker.depths import Depths, queue_depths
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    free_port,
    running,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)
ADMIN = {"Authorization": "Bearer admin-token"}
IDS = ["a-1", "a_2", "b", "c0", "c1", "zeta", "Zulu"]  # byte order: "Zulu" sorts first


async def _get(base: str, path: str, headers: dict[str, str] | None = None
               ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(
        base + path, headers=ADMIN if headers is None else headers
    ) as response:
        return response.status, await response.json()


async def _every_page(base: str, query: str, headers: dict[str, str] | None = None
                      ) -> list[list[str]]:
    """The client ids of each page, following `next` until it is null."""
    pages: list[list[str]] = []
    after = ""
    while True:
        status, body = await _get(base, f"/api/v1/clients?{query}{after}", headers)
        assert status == 200, body
        assert set(body) == {"clients", "next"}
        pages.append([c["client_id"] for c in body["clients"]])
        if body["next"] is None:
            return pages
        assert body["next"] == pages[-1][-1]
        after = f"&after={body['next']}"


@pytest.fixture
def listing_settings(prefix, tmp_path, shop: FakeShop):
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, IDS))
    return settings_for(prefix, tmp_path, clients_file=path, http_port=free_port(),
                        depth_refresh=0.05)


async def test_pages_cover_every_client_once_in_order_and_filter_by_state(
    listing_settings, amqp: Broker, shop: FakeShop
):
    """Pages of 3 by `next`; `state` lists the parked, the paused or the running alone."""
    shop.script["X"] = [422]
    async with running(listing_settings) as sup:
        base = f"http://127.0.0.1:{listing_settings.http_port}"
        await amqp.publish("b", "X")
        await amqp.wait_event("client.parked", "b")
        await sup.ops.pause("c1", actor="tester")
        await wait_until(lambda: "c1" in sup.state.view.paused, 10, "c1 to be paused")
        await sup.depth_cache.refreshed()
        pages = await _every_page(base, "limit=3")
        default = await _get(base, "/api/v1/clients")
        parked = await _every_page(base, "state=parked")
        paused = await _every_page(base, "state=paused&limit=1")
        running_ = await _every_page(base, "state=running&limit=2")
        past_the_end = await _get(base, "/api/v1/clients?after=zzz")
    assert pages == [["Zulu", "a-1", "a_2"], ["b", "c0", "c1"], ["zeta"]]
    status, body = default
    assert (status, [c["client_id"] for c in body["clients"]], body["next"]) == (
        200, sorted(IDS), None)
    assert {c["client_id"]: (c["state"], c["depth"]) for c in body["clients"]} == {
        "Zulu": ("running", 0), "a-1": ("running", 0), "a_2": ("running", 0),
        "b": ("parked", 0), "c0": ("running", 0), "c1": ("paused", 0), "zeta": ("running", 0)}
    assert body["clients"][3]["parked"]["message_id"] == "X"
    assert parked == [["b"]]
    assert paused == [["c1"]]
    assert running_ == [["Zulu", "a-1"], ["a_2", "c0"], ["zeta"]]
    assert past_the_end == (200, {"clients": [], "next": None})


LIMIT_ERROR = "limit must be a whole number from 1 to 1000"


async def test_bad_parameters_answer_400_naming_the_parameter_and_what_it_may_be(
    listing_settings, amqp: Broker
):
    """Each bad `state`, `limit` or `after` is one JSON error; nothing is listed."""
    cases = {
        "state=stuck": "state must be one of parked, paused, running",
        "limit=0": LIMIT_ERROR, "limit=1001": LIMIT_ERROR, "limit=ten": LIMIT_ERROR,
        "limit=-1": LIMIT_ERROR, "limit=1e3": LIMIT_ERROR,
        "after=a%2Fb": "after must be a client id (1 to 64 characters from A-Z a-z 0-9 _ -), "
                       "the last one of the previous page",
    }
    async with running(listing_settings):
        base = f"http://127.0.0.1:{listing_settings.http_port}"
        answers = {query: await _get(base, f"/api/v1/clients?{query}") for query in cases}
    assert answers == {query: (400, {"ok": False, "error": error})
                       for query, error in cases.items()}


async def test_a_client_token_lists_its_own_client_and_no_cursor_names_another(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """acme's console token sees acme alone, whatever the page size, filter or cursor."""
    token = "acme-console-token"
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex", "initech"], acme=(
        f'console_token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"')))
    settings = settings_for(prefix, tmp_path, clients_file=path, http_port=free_port())
    own = {"Authorization": f"Bearer {token}"}
    async with running(settings):
        base = f"http://127.0.0.1:{settings.http_port}"
        pages = await _every_page(base, "limit=1", own)
        admin_pages = await _every_page(base, "limit=1")
        answers = [await _get(base, f"/api/v1/clients?{q}", own)
                   for q in ("state=running", "state=parked", "after=acme", "after=a")]
    assert pages == [["acme"]]
    assert admin_pages == [["acme"], ["globex"], ["initech"]]
    assert [(status, [c["client_id"] for c in body["clients"]], body["next"])
            for status, body in answers] == [
        (200, ["acme"], None), (200, [], None), (200, [], None), (200, ["acme"], None)]


class Gate:
    """Wraps the supervisor's `queue_depths`: every call after the first waits while shut."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.calls = 0
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = asyncio.Event()

    async def __call__(self, connection: Any, names: list[str], *args: Any) -> Depths:
        self.calls += 1
        if self.calls > 1 and not self.open.is_set():
            self.waiting.set()
            await self.open.wait()
        found: Depths = await self._real(connection, names, *args)
        return found

    async def hold_next_walk(self, sup: Any) -> None:
        """After the walk at start-up, ask for another (a read) and wait until it is held."""
        await wait_until(lambda: sup.depth_cache.walks > 0, 10, "the first walk")
        self.open.clear()
        assert sup.depth_cache.depths  # a reader: the next walk starts, and is held
        await asyncio.wait_for(self.waiting.wait(), 10)


@pytest.fixture
def gate(monkeypatch) -> Gate:
    gate = Gate(queue_depths)
    monkeypatch.setattr("daemon.supervisor.queue_depths", gate)  # what the walk calls
    return gate


async def test_listings_scrapes_and_status_answer_while_a_walk_is_held_and_start_none(
    listing_settings, amqp: Broker, gate: Gate
):
    """With the depth walk stuck, 20 listings, a scrape and `status` answer with the last
    walk's depths, and not one of them walks the queues."""
    async with running(listing_settings) as sup:
        base = f"http://127.0.0.1:{listing_settings.http_port}"
        await gate.hold_next_walk(sup)
        calls, walks = gate.calls, sup.depth_cache.walks
        async with asyncio.timeout(10):
            listings = [await _get(base, "/api/v1/clients?limit=5") for _ in range(20)]
            async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as scrape:
                metrics = await scrape.text()
            status = await amqp.control(action="status")
        after = (gate.calls, sup.depth_cache.walks)
        gate.open.set()
    assert after == (calls, walks)
    assert all(listing == listings[0] for listing in listings)
    assert [(c["client_id"], c["depth"]) for c in listings[0][1]["clients"]] == [
        (c, 0) for c in sorted(IDS)[:5]]
    assert 's2s_client_queue_depth{client_id="Zulu"} 0.0' in metrics
    assert [c["depth"] for c in status["clients"]] == [0] * len(IDS)


async def test_a_new_clients_depth_is_null_until_the_next_walk_shows_it(
    listing_settings, amqp: Broker, gate: Gate
):
    """Registered while the walk is held: listed at once with depth null; the walk after
    shows the items waiting behind its pause."""
    async with running(listing_settings) as sup:
        base = f"http://127.0.0.1:{listing_settings.http_port}"
        await gate.hold_next_walk(sup)
        await sup.ops.register("newco", actor="tester")
        await sup.ops.pause("newco", actor="tester")
        for n in range(3):
            await amqp.publish("newco", type_="system.noop", payload={}, message_id=f"N{n}")
        _, held = await _get(base, "/api/v1/clients?after=c1&limit=1")
        gate.open.set()

        async def depth() -> int | None:
            await sup.depth_cache.refreshed()
            _, body = await _get(base, "/api/v1/clients?after=c1&limit=1")
            found: int | None = body["clients"][0]["depth"]
            return found

        depths = [await depth()]
        while depths[-1] != 2 and len(depths) < 50:  # quorum counts may lag a little
            depths.append(await depth())
    assert [(c["client_id"], c["depth"]) for c in held["clients"]] == [("newco", None)]
    assert depths[-1] == 2  # N0 is held by the paused consumer, N1 and N2 wait
