"""Groups of failed items and parks (SPEC section 9) on a running daemon: listed by reason,
paged, and retried or skipped a whole group at a time over the API and control messages."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

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
SHOP = '{"message":"sku rejected by the shop"}'


async def _call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(
        method, base + path, headers=ADMIN, json=body
    ) as response:
        return response.status, await response.json()


@pytest.fixture
def group_settings(prefix, tmp_path, shop: FakeShop):
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex", "initech"]))
    return settings_for(prefix, tmp_path, clients_file=path, http_port=free_port())


def _shape(groups: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(g["type"], g["error_pattern"], g["count"], g["clients"], g["client_ids"])
            for g in groups]


async def test_failed_orders_refused_for_one_reason_are_one_group_retried_at_once(
    group_settings, amqp: Broker, shop: FakeShop
):
    """Three orders of two clients refused with 422 are one group, a 409 another; a page of
    one group names the next; retrying the 422 group runs all three again, skipping the 409
    group archives its order with the reason; a group gone answers 404."""
    shop.script.update({"A1": [422], "A2": [422], "G1": [422]})
    shop.always["B1"] = 409
    async with running(group_settings) as sup:
        base = f"http://127.0.0.1:{group_settings.http_port}"
        for client, order in (("acme", "A1"), ("acme", "A2"), ("globex", "G1"),
                              ("acme", "B1")):
            await amqp.order(client, order)
        await wait_until(lambda: len(sup.state.view.failed) == 4, 15, "four failed orders")
        status, listed = await _call(base, "GET", "/api/v1/failed/groups")
        first = await _call(base, "GET", "/api/v1/failed/groups?limit=1")
        second = await _call(base, "GET", f"/api/v1/failed/groups?limit=1&after={first[1]['next']}")
        g422, g409 = (g["group"] for g in listed["groups"])
        retried = await _call(base, "POST", f"/api/v1/failed/groups/{g422}/retry")
        await wait_until(lambda: sorted(sup.state.view.failed) == ["B1"], 15,
                         "the 422 group to leave the failed store")
        for client, count in (("acme", 2), ("globex", 1)):
            await amqp.wait_event("item.succeeded", client, count)
        skipped = await _call(base, "POST", f"/api/v1/failed/groups/{g409}/skip",
                              {"reason": "the warehouse has it already"})
        await amqp.wait_event("item.skipped", "acme")
        again = await _call(base, "POST", f"/api/v1/failed/groups/{g422}/retry")
        await sup.state.sync()  # audit records are appended, not read back: read them here
        audit = await _call(base, "GET", "/api/v1/audit")
    archived = await amqp.queue_messages(amqp.topo.archive)

    assert status == 200
    assert _shape(listed["groups"]) == [
        ("order.add_to_source", f"POST /<client>/orders → HTTP 422: {SHOP}", 3, 2,
         ["acme", "globex"]),
        ("order.add_to_source", f"POST /<client>/orders → HTTP 409: {SHOP}", 1, 1, ["acme"])]
    assert listed["next"] is None
    assert listed["groups"][1]["example_message_id"] == "B1"
    assert listed["groups"][0]["first_at"] <= listed["groups"][0]["last_at"]
    assert (first[1]["groups"], first[1]["next"]) == (listed["groups"][:1], f"3-{g422}")
    assert second == (200, {"groups": listed["groups"][1:], "next": None})
    assert retried[0] == 200
    assert (retried[1]["ok"], retried[1]["group"], retried[1]["count"]) == (True, g422, 3)
    assert sorted(map(tuple, (r.items() for r in retried[1]["results"]))) == sorted(
        tuple({"client_id": c, "message_id": m, "ok": True}.items())
        for c, m in (("acme", "A1"), ("acme", "A2"), ("globex", "G1")))
    assert skipped == (200, {"ok": True, "group": g409, "count": 1, "results": [
        {"client_id": "acme", "message_id": "B1", "ok": True}]})
    assert [(e["message_id"], e["actor"], e["reason"]) for e in amqp.named("item.skipped")] \
        == [("B1", "admin", "the warehouse has it already")]
    assert [(m.message_id, (m.headers or {})["x-s2s-skip-reason"]) for m in archived] == [
        ("B1", "the warehouse has it already")]
    assert again == (404, {"ok": False, "error": f"no failed group {g422!r}"})
    # The audit trail: one entry per item a group action touched, newest first; a group not
    # found (the 404) touched nothing and leaves none.
    entries = [(e["action"], e["via"], e["client_id"], e["message_id"], e["outcome"])
               for e in audit[1]["entries"]]
    assert entries[:1] == [("skip_failed_group", "api", "acme", "B1", "ok")]
    assert sorted(entries[1:]) == [("retry_failed_group", "api", c, m, "ok")
                                   for c, m in (("acme", "A1"), ("acme", "A2"), ("globex", "G1"))]


async def test_parked_clients_group_by_reason_and_a_group_retry_resumes_them_all(
    group_settings, amqp: Broker, shop: FakeShop
):
    """acme and globex parked on one 422, initech on a 409: two groups counting clients; a
    control message retries the 422 group (both succeed and resume), the API skips the 409
    one (initech resumes); control lists them too."""
    shop.script.update({"X1": [422], "X2": [422]})
    shop.always["Z"] = 409
    async with running(group_settings) as sup:
        base = f"http://127.0.0.1:{group_settings.http_port}"
        for client, sku in (("acme", "X1"), ("globex", "X2"), ("initech", "Z")):
            await amqp.publish(client, sku)
        await wait_until(lambda: len(sup.state.view.parked) == 3, 15, "three parked clients")
        status, listed = await _call(base, "GET", "/api/v1/parked/groups")
        over_control = await amqp.control(action="list_parked_groups")
        no_group = await _call(base, "POST", "/api/v1/actions/retry_parked_group", {})
        g422, g409 = (g["group"] for g in listed["groups"])
        retried = await amqp.control(action="retry_parked_group", group=g422,
                                     reason="the shop fixed it")
        skipped = await _call(base, "POST", f"/api/v1/parked/groups/{g409}/skip",
                              {"reason": "not ours"})
        for client in ("acme", "globex", "initech"):
            await amqp.wait_event("client.resumed", client)
        parked_after = dict(sup.state.view.parked)

    assert status == 200
    assert _shape(listed["groups"]) == [
        ("product.sync", f"PUT /<client>/products/<id> → HTTP 422: {SHOP}", 2, 2,
         ["acme", "globex"]),
        ("product.sync", f"PUT /<client>/products/<id> → HTTP 409: {SHOP}", 1, 1, ["initech"])]
    assert over_control == {"ok": True, "groups": listed["groups"]}
    assert no_group == (409, {"ok": False, "error": "a group is required"})
    assert retried["ok"] is True
    assert sorted((r["client_id"], r["message_id"], r["ok"], r["outcome"])
                  for r in retried["results"]) == [
        ("acme", "X1", True, "succeeded"), ("globex", "X2", True, "succeeded")]
    assert skipped == (200, {"ok": True, "group": g409, "count": 1, "results": [
        {"client_id": "initech", "message_id": "Z", "ok": True}]})
    assert sorted((e["client_id"], e["how"], e["actor"]) for e in amqp.named("client.resumed")) \
        == [("acme", "retry", "tester"), ("globex", "retry", "tester"),
            ("initech", "skip", "admin")]
    assert parked_after == {}
