"""The JSON API of SPEC section 8 on a running daemon: access, shapes, and actions that act."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from daemon.core.unrouted import UNROUTED_SCAN_BYTES
from tests.proxy import broker_proxy
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


async def _call(base: str, method: str, path: str, headers: dict[str, str] | None = None,
                body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(
        method, base + path, headers=headers, json=body
    ) as response:
        return response.status, await response.json()


@pytest.fixture
def api_settings(prefix, tmp_path, shop: FakeShop):
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex"]))
    return settings_for(prefix, tmp_path, clients_file=path, http_port=free_port(),
                        depth_refresh=0.1)


async def test_health_and_readiness_need_no_token(api_settings, amqp: Broker):
    """/healthz answers while the process lives; /readyz once connected and consuming."""
    async with running(api_settings):
        base = f"http://127.0.0.1:{api_settings.http_port}"
        assert await _call(base, "GET", "/healthz") == (200, {"ok": True})
        assert await _call(base, "GET", "/readyz") == (200, {"ready": True, "clients": 2})


@pytest.mark.parametrize("clients", [["acme", "globex"], []], ids=["two-clients", "no-clients"])
async def test_while_the_broker_is_unreachable_readyz_and_the_api_say_so(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, clients
):
    """Links cut and new ones refused: /readyz 503 with its reason, API calls that need the
    broker 503 in JSON, what the state log knows still answers; ready again once back."""
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, clients))
    async with broker_proxy() as proxy:
        settings = settings_for(prefix, tmp_path, amqp_url=proxy.url, clients_file=path,
                                http_port=free_port())
        async with running(settings) as sup:
            base = f"http://127.0.0.1:{settings.http_port}"
            before = await _call(base, "GET", "/readyz")
            proxy.refusing = True
            proxy.cut()
            await wait_until(lambda: not sup.connected, 10, "the daemon to see the link go")
            down = await _call(base, "GET", "/readyz")
            alive = await _call(base, "GET", "/healthz")
            listed = await _call(base, "GET", "/api/v1/unrouted", ADMIN)
            failed = await _call(base, "GET", "/api/v1/failed", ADMIN)
            proxy.refusing = False
            await wait_until(lambda: sup.connected, 30, "the daemon to reconnect")
            after = await _call(base, "GET", "/readyz")
    ready = (200, {"ready": True, "clients": len(clients)})
    assert (before, down, alive, after) == (
        ready, (503, {"ready": False, "reason": "not connected to the broker"}),
        (200, {"ok": True}), ready)
    assert listed == (503, {"ok": False, "error": "not connected to the broker; try again "
                                                  "shortly"})
    assert failed == (200, {"items": []})


@pytest.mark.parametrize(("headers", "status"), [
    (None, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "Basic admin-token"}, 401),
    (ADMIN, 200),
], ids=["no-token", "wrong-token", "not-bearer", "admin"])
async def test_the_api_refuses_callers_without_the_right_token(
    api_settings, amqp: Broker, headers, status
):
    """No token or a wrong one: 401 with a JSON error; the admin token: the clients."""
    async with running(api_settings):
        base = f"http://127.0.0.1:{api_settings.http_port}"
        got, body = await _call(base, "GET", "/api/v1/clients", headers)
    assert got == status
    if status == 401:
        assert body == {"ok": False, "error": "missing or wrong bearer token"}


async def test_with_no_admin_token_configured_everyone_is_refused(
    prefix, tmp_path, amqp: Broker
):
    """An unset S2SQ_ADMIN_TOKEN locks the API: even 'Bearer ' with an empty token fails."""
    settings = settings_for(prefix, tmp_path, http_port=free_port(), admin_token=None)
    async with running(settings):
        base = f"http://127.0.0.1:{settings.http_port}"
        assert (await _call(base, "GET", "/api/v1/clients", ADMIN))[0] == 401
        assert (await _call(base, "GET", "/api/v1/clients", {"Authorization": "Bearer "}))[0] \
            == 401


async def test_clients_are_listed_and_shown_with_state_depth_and_parked_item(
    api_settings, amqp: Broker, shop: FakeShop
):
    """GET /api/v1/clients and /clients/{id} show what SPEC section 8 lists; unknown is 404."""
    shop.script["X"] = [422]
    async with running(api_settings):
        base = f"http://127.0.0.1:{api_settings.http_port}"
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        await amqp.wait_event("client.parked", "acme")
        listed = await _call(base, "GET", "/api/v1/clients", ADMIN)
        one = await _call(base, "GET", "/api/v1/clients/acme", ADMIN)
        missing = await _call(base, "GET", "/api/v1/clients/nobody", ADMIN)
    assert listed[0] == 200
    assert [(c["client_id"], c["state"]) for c in listed[1]["clients"]] == [
        ("acme", "parked"), ("globex", "running")]
    status, acme = one
    assert status == 200
    assert set(acme) >= {"client_id", "state", "depth", "parked"}
    assert acme["depth"] in (0, 1)  # quorum counts may lag (DESIGN fact 9)
    assert acme["parked"]["message_id"] == "X"
    assert set(acme["parked"]) == {"message_id", "type", "error", "attempts", "since", "payload"}
    assert missing == (404, {"ok": False, "error": "client 'nobody' is not registered"})


async def test_a_client_whose_queue_was_deleted_shows_no_depth_and_the_rest_still_list(
    api_settings, amqp: Broker
):
    """Someone deleted acme's queue behind the daemon's back: depth null, not a failed list."""
    async with running(api_settings) as sup:
        base = f"http://127.0.0.1:{api_settings.http_port}"
        await amqp.publish("globex", type_="system.noop", payload={}, message_id="G1")
        await amqp.wait_event("item.succeeded", "globex")
        async with amqp.connection.channel() as channel:
            await channel.queue_delete(amqp.topo.client_queue("acme"))
        await sup.depth_cache.refreshed()  # the listing shows what the last walk found
        status, body = await _call(base, "GET", "/api/v1/clients", ADMIN)
        one = await _call(base, "GET", "/api/v1/clients/acme", ADMIN)
    assert status == 200
    assert [(c["client_id"], c["depth"]) for c in body["clients"]] == [
        ("acme", None), ("globex", 0)]
    assert (one[0], one[1]["depth"]) == (200, None)


async def test_actions_over_http_act_like_control_messages(
    api_settings, amqp: Broker, shop: FakeShop
):
    """retry, skip, pause, resume and register through the API, answered as the control reply."""
    shop.script["X"] = [422, 422]
    async with running(api_settings) as sup:
        base = f"http://127.0.0.1:{api_settings.http_port}"
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        await amqp.wait_event("client.parked", "acme")
        retried = await _call(base, "POST", "/api/v1/clients/acme/retry", ADMIN)
        stale = await _call(base, "POST", "/api/v1/clients/acme/skip", ADMIN,
                            {"message_id": "nope"})
        skipped = await _call(base, "POST", "/api/v1/clients/acme/skip", ADMIN,
                              {"message_id": "X", "reason": "bad data"})
        await amqp.wait_event("item.succeeded", "acme")
        paused = await _call(base, "POST", "/api/v1/clients/globex/pause", ADMIN)
        resumed = await _call(base, "POST", "/api/v1/clients/globex/resume", ADMIN)
        created = await _call(base, "POST", "/api/v1/clients", ADMIN, {"client_id": "initech"})
        again = await _call(base, "POST", "/api/v1/clients", ADMIN, {"client_id": "initech"})
        invalid = await _call(base, "POST", "/api/v1/clients", ADMIN, {"client_id": "a/b"})
        bad_json = await _call(base, "POST", "/api/v1/clients/acme/retry", ADMIN, ["x"])
        assert "initech" in sup.consumers
    assert retried[0] == 200
    assert retried[1]["outcome"] == "failed"
    assert stale == (409, {"ok": False, "error": "message 'nope' is not the parked item of "
                                                 "client 'acme' (the parked item is 'X')"})
    assert skipped == (200, {"ok": True, "message_id": "X"})
    assert paused == (200, {"ok": True, "client_id": "globex", "state": "paused"})
    assert resumed == (200, {"ok": True, "client_id": "globex", "state": "running"})
    assert created == (201, {"ok": True, "client_id": "initech", "created": True})
    assert again == (200, {"ok": True, "client_id": "initech", "created": False})
    assert invalid[0] == 409
    assert invalid[1]["error"].startswith("invalid client id 'a/b'")
    assert bad_json == (409, {"ok": False, "error": "request body must be a JSON object"})
    assert amqp.named("item.skipped", "acme")[0]["actor"] == "admin"


async def test_resume_all_resumes_each_paused_client_and_says_what_it_did_to_each(
    api_settings, amqp: Broker
):
    """One admin action over several clients, the same from the API and a control message:
    an answer per client, in order; a client that was not paused is left and said so."""
    async with running(api_settings) as sup:
        base = f"http://127.0.0.1:{api_settings.http_port}"
        for client_id in ("acme", "globex"):
            await sup.ops.pause(client_id, actor="test")
        status, answer = await _call(base, "POST", "/api/v1/actions/resume_all", ADMIN,
                                     {"client_ids": ["globex", "acme", "acme", "nobody"]})
        await sup.ops.pause("acme", actor="test")
        by_control = await amqp.control(action="resume_all", client_ids=["acme"], actor="ops")
        empty = await _call(base, "POST", "/api/v1/actions/resume_all", ADMIN, {})
        assert [sup.ops.state_of(c) for c in ("acme", "globex")] == ["running", "running"]
        await wait_until(lambda: len(amqp.named("client.resumed", "acme")) == 2, 15,
                         "acme's two resumes announced")
    assert (status, answer) == (200, {"ok": True, "results": [
        {"client_id": "globex", "ok": True, "state": "running"},
        {"client_id": "acme", "ok": True, "state": "running"},
        {"client_id": "acme", "ok": False, "error": "client 'acme' is not paused"},
        {"client_id": "nobody", "ok": False, "error": "client 'nobody' is not registered"},
    ]})
    assert by_control == {"ok": True, "results": [
        {"client_id": "acme", "ok": True, "state": "running"}]}
    assert empty == (409, {"ok": False, "error": "resume_all needs client_ids"})
    assert [e["actor"] for e in amqp.named("client.resumed", "acme")] == ["admin", "ops"]


async def test_unrouted_items_are_listed_and_replayed_over_http(
    api_settings, amqp: Broker, shop: FakeShop
):
    """GET /api/v1/unrouted lists them oldest first; POST .../replay moves them in order."""
    async with running(api_settings) as sup:
        base = f"http://127.0.0.1:{api_settings.http_port}"
        await amqp.publish("initech", type_="system.noop", payload={}, message_id="I1")
        await amqp.publish("initech", type_="system.noop", payload={}, message_id="I2")
        listed = await _call(base, "GET", "/api/v1/unrouted", ADMIN)
        await sup.ops.register("initech", actor="test")
        replayed = await _call(base, "POST", "/api/v1/unrouted/initech/replay", ADMIN)
        await amqp.wait_event("item.succeeded", "initech", 2)
    assert listed == (200, {"items": [
        {"message_id": "I1", "client_id": "initech", "type": "system.noop"},
        {"message_id": "I2", "client_id": "initech", "type": "system.noop"}],
        "more": False, "total": 2})
    assert replayed == (200, {"ok": True, "client_id": "initech", "replayed": 2})
    assert [e["message_id"] for e in amqp.named("item.succeeded", "initech")] == ["I1", "I2"]


async def test_a_long_unrouted_queue_is_listed_a_page_at_a_time_and_replayed_whole(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Issue 12, hole 11: 300 unrouted items of 100 KB. A listing reads only the items it
    answers (the rest are never handed to the daemon: not redelivered), at most `?limit=`
    and at most UNROUTED_SCAN_BYTES of bodies, and says there are more; replay moves all
    300, in order."""
    skus = [f"B{n:03d}" for n in range(300)]
    description = "x" * 100_000
    for sku in skus:  # no daemon yet, no queue for bigco: they all land in unrouted
        await amqp.publish("bigco", sku, payload={"sku": sku,
                                                  "product": {"description": description}})
    body_size = len(orjson.dumps({"sku": "B000", "product": {"description": description}}))
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["bigco"]))
    settings = settings_for(prefix, tmp_path, clients_file=path, http_port=free_port())
    async with running(settings):
        base = f"http://127.0.0.1:{settings.http_port}"
        first = await _call(base, "GET", "/api/v1/unrouted", ADMIN)
        read = [m.redelivered for m in await amqp.queue_messages(amqp.topo.unrouted)]
        five = await _call(base, "GET", "/api/v1/unrouted?limit=5", ADMIN)
        most = await _call(base, "GET", "/api/v1/unrouted?limit=1000", ADMIN)
        refused = [await _call(base, "GET", f"/api/v1/unrouted?limit={bad}", ADMIN)
                   for bad in ("0", "1001", "ten", "9" * 5000)]
        replayed = await _call(base, "POST", "/api/v1/unrouted/bigco/replay", ADMIN)
        await wait_until(lambda: len(shop.skus("bigco")) >= 300, 60, "the 300 replayed items")
        after = await _call(base, "GET", "/api/v1/unrouted", ADMIN)
    assert first[0] == 200
    assert [i["message_id"] for i in first[1]["items"]] == skus[:100]
    assert (first[1]["more"], first[1]["total"]) == (True, 300)
    assert read == [True] * 100 + [False] * 200
    assert [i["message_id"] for i in five[1]["items"]] == skus[:5]
    assert five[1]["more"] is True
    cap = -(-UNROUTED_SCAN_BYTES // body_size)  # the read that crosses the cap is the last
    assert [i["message_id"] for i in most[1]["items"]] == skus[:cap]
    assert most[1]["more"] is True
    assert refused == [(400, {"ok": False, "error": "limit must be a whole number from 1 to 1000"})
                       ] * 4
    assert replayed == (200, {"ok": True, "client_id": "bigco", "replayed": 300})
    assert shop.skus("bigco") == skus
    assert after == (200, {"items": [], "more": False, "total": 0})
