"""The history of what ran on a running daemon: fed by the outcomes, read over the API, kept
across a restart, paged; off when S2SQ_HISTORY is off."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from daemon.operations.history import HistoryQuery
from daemon.supervisor import Supervisor
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    free_port,
    running,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)
ADMIN = {"Authorization": "Bearer admin-token"}
AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def _get(settings: Any, path: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{settings.http_port}{path}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=ADMIN) as response:
        return response.status, await response.json()


def _seen(sup: Supervisor, client: str) -> list[tuple[Any, ...]]:
    items = sup.ops.history(client, HistoryQuery(1000))["items"]
    return [(i["message_id"], i["outcome"], i["attempts"]) for i in items]


@pytest.fixture
def history_settings(prefix, tmp_path, shop: FakeShop):
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex"]))
    return settings_for(prefix, tmp_path, clients_file=path, http_port=free_port(),
                        nonblocking_retry_delays="0.2")


async def test_what_ran_is_listed_newest_first_with_its_outcome_and_survives_a_restart(
    history_settings, amqp: Broker, shop: FakeShop
):
    """Successes, a failed attempt, a park and its skip, a failed order: each an entry of its
    client, newest first, with attempts, duration and error; read again after a restart."""
    shop.script["B"] = [503]
    shop.always["C"] = 422
    shop.always["O-1"] = 422
    expected = [("D", "succeeded", 1), ("C", "skipped", None), ("C", "failed", 1),
                ("B", "succeeded", 2), ("B", "failed", 1), ("A", "succeeded", 1)]
    async with running(history_settings) as sup:
        for sku in ("A", "B", "C", "D"):
            await amqp.publish("acme", sku)
        await amqp.order("globex", "O-1")
        await amqp.wait_event("client.parked", "acme")
        assert (await amqp.control(action="skip", client_id="acme", message_id="C"))["ok"]
        await wait_until(lambda: _seen(sup, "acme") == expected, 15,
                         "acme's history to list its six outcomes")
        await wait_until(lambda: _seen(sup, "globex") == [("O-1", "failed", 1)], 15,
                         "globex's failed order in its history")
        status, body = await _get(history_settings, "/api/v1/clients/acme/history")
    assert status == 200
    assert body["next"] is None
    assert [(i["message_id"], i["outcome"], i["attempts"]) for i in body["items"]] == expected
    assert all(AT.match(i["at"]) for i in body["items"])
    assert [i["at"] for i in body["items"]] == sorted((i["at"] for i in body["items"]),
                                                      reverse=True)
    by_outcome = {(i["message_id"], i["outcome"]): i for i in body["items"]}
    assert "HTTP 503" in by_outcome["B", "failed"]["error"]
    assert by_outcome["B", "succeeded"]["error"] is None
    assert "HTTP 422" in by_outcome["C", "failed"]["error"]
    assert by_outcome["B", "succeeded"]["duration_ms"] > 0
    assert by_outcome["C", "skipped"]["type"] == "product.sync"
    async with running(history_settings) as sup:
        await wait_until(lambda: _seen(sup, "acme") == expected, 15,
                         "acme's history read back from the stream after a restart")
        again = await _get(history_settings, "/api/v1/clients/acme/history")
    assert again == (200, body)


async def test_pages_follow_next_and_bad_queries_answer_400(
    history_settings, amqp: Broker, shop: FakeShop
):
    """`?limit=` pages, `?before=` is the `next` of the page before; bad values are 400,
    an unknown client 404."""
    async with running(history_settings) as sup:
        for n in range(5):
            await amqp.publish("acme", f"S{n}")
        await wait_until(lambda: len(_seen(sup, "acme")) == 5, 15, "five entries")
        first = await _get(history_settings, "/api/v1/clients/acme/history?limit=2")
        nxt = first[1]["next"]
        second = await _get(history_settings, f"/api/v1/clients/acme/history?limit=2&before={nxt}")
        last = await _get(history_settings,
                          f"/api/v1/clients/acme/history?limit=2&before={second[1]['next']}")
        bad_limit = await _get(history_settings, "/api/v1/clients/acme/history?limit=1001")
        bad_cursor = await _get(history_settings, "/api/v1/clients/acme/history?before=x")
        unknown = await _get(history_settings, "/api/v1/clients/nobody/history")
        empty = await _get(history_settings, "/api/v1/clients/globex/history")
    skus = [[i["message_id"] for i in page[1]["items"]] for page in (first, second, last)]
    assert skus == [["S4", "S3"], ["S2", "S1"], ["S0"]]
    assert last[1]["next"] is None
    assert bad_limit == (400, {"ok": False,
                               "error": "limit must be a whole number from 1 to 1000"})
    assert bad_cursor == (400, {"ok": False, "error": "before must be the next cursor of a"
                                                     " previous page, like 1234-5"})
    assert unknown == (404, {"ok": False, "error": "client 'nobody' is not registered"})
    assert empty == (200, {"items": [], "next": None})


async def test_with_the_history_off_nothing_is_written_and_the_route_says_so(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """S2SQ_HISTORY=false: no stream is declared, and the route answers 409 with why."""
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme"]))
    settings = settings_for(prefix, tmp_path, clients_file=path, http_port=free_port(),
                            history=False)
    async with running(settings):
        await amqp.publish("acme", "A")
        await amqp.wait_event("item.succeeded", "acme")
        answer = await _get(settings, "/api/v1/clients/acme/history")
    assert answer == (409, {"ok": False, "error": "the history of what ran is off on this"
                                                  " daemon (S2SQ_HISTORY=false)"})
    async with amqp.connection.channel() as channel:
        with pytest.raises(Exception, match="NOT_FOUND"):
            await channel.declare_queue(amqp.topo.history, passive=True)
