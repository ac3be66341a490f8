"""The blocking queue end to end: the daemon in-process, the real broker, a fake shop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest

from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    close_connection,
    running,
    settings_for,
    stays,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)


def _settings(prefix: str, tmp_path: Path, shop: FakeShop, clients: list[str], **kw):
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, clients))
    return settings_for(prefix, tmp_path, clients_file=path, **kw)


async def test_items_of_one_client_reach_the_shop_once_each_in_publish_order(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """200 items of one client arrive exactly once each, in the order they were published."""
    skus = [f"SKU-{n:03d}" for n in range(200)]
    async with running(_settings(prefix, tmp_path, shop, ["acme"])):
        for sku in skus:
            await amqp.publish("acme", sku)
        await wait_until(lambda: len(shop.seen) >= 200, 30, "200 requests at the shop")
        await amqp.wait_event("item.succeeded", "acme", 200)
    assert shop.skus("acme") == skus
    assert {s.method for s in shop.seen} == {"PUT"}
    assert [s.message_id for s in shop.seen] == skus


async def test_a_parked_client_holds_only_its_own_queue(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """acme parks on a 422 and stops there; globex's items all go through meanwhile."""
    shop.script["BAD"] = [422]
    async with running(_settings(prefix, tmp_path, shop, ["acme", "globex"])):
        for sku in ("A1", "BAD", "A3"):
            await amqp.publish("acme", sku)
        [parked] = await amqp.wait_event("client.parked", "acme")
        for n in range(20):
            await amqp.publish("globex", f"G{n}")
        await wait_until(lambda: len(shop.skus("globex")) == 20, 15, "globex's 20 items")
        await stays(lambda: shop.skus("acme") == ["A1", "BAD"], 0.5, "acme ran past its park")
    assert parked["message_id"] == "BAD"
    assert parked["error"] == (
        'PUT /acme/products/BAD → HTTP 422: {"message":"sku rejected by the shop"}'
    )
    assert shop.skus("globex") == [f"G{n}" for n in range(20)]


async def test_transient_failures_are_retried_in_place_and_keep_the_order(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """503, 503, 200 on the second item: three attempts at the head, then the rest in order."""
    shop.script["B"] = [503, 503]
    async with running(_settings(prefix, tmp_path, shop, ["acme"])):
        for sku in ("A", "B", "C", "D"):
            await amqp.publish("acme", sku)
        await amqp.wait_event("item.succeeded", "acme", 4)
    assert shop.skus("acme") == ["A", "B", "B", "B", "C", "D"]
    failed = amqp.named("item.failed", "acme")
    assert [(e["message_id"], e["attempt"], e["final"]) for e in failed] == [
        ("B", 1, False), ("B", 2, False)]
    assert amqp.named("client.parked") == []
    b_done = next(e for e in amqp.named("item.succeeded") if e["message_id"] == "B")
    assert b_done["attempts"] == 3


async def test_a_permanent_failure_parks_after_one_attempt(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """A 422 is tried once; the client parks with the error, attempts 1, and nothing after runs."""
    shop.script["X"] = [422]
    async with running(_settings(prefix, tmp_path, shop, ["acme"])) as sup:
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        await amqp.wait_event("client.parked", "acme")
        status = await amqp.control(action="status", client_id="acme")
        await stays(lambda: shop.skus() == ["X"], 0.5, "a parked item ran again or Y ran")
        assert sup.consumers["acme"].state == "parked"
    assert status["ok"] is True
    client = status["client"]
    assert client["state"] == "parked"
    assert client["parked"]["message_id"] == "X"
    assert client["parked"]["attempts"] == 1
    # what the producer sent, not the parsed form with its defaults ("target")
    assert client["parked"]["payload"] == {"sku": "X", "product": {"name": "Product X"}}
    assert [e["final"] for e in amqp.named("item.failed")] == [True]


async def test_exhausted_transient_retries_park_with_every_attempt_counted(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Three 503s in a row (S2SQ_BLOCKING_ATTEMPTS=3) park the client: one park event, not three."""
    shop.script["X"] = [503, 503, 503]
    async with running(_settings(prefix, tmp_path, shop, ["acme"])):
        await amqp.publish("acme", "X")
        [parked] = await amqp.wait_event("client.parked", "acme")
        await stays(lambda: len(amqp.named("client.parked")) == 1, 0.3, "a second park event")
    assert shop.skus() == ["X", "X", "X"]
    assert parked["error"].startswith("PUT /acme/products/X → HTTP 503")
    assert [(e["attempt"], e["final"]) for e in amqp.named("item.failed")] == [
        (1, False), (2, False), (3, True)]


async def test_retry_that_fails_stays_parked_and_retry_that_succeeds_resumes(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """retry answers after the attempt: first 'failed' with the error, then 'succeeded'."""
    shop.script["X"] = [422, 500]
    async with running(_settings(prefix, tmp_path, shop, ["acme"])):
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        await amqp.wait_event("client.parked", "acme")
        first = await amqp.control(action="retry", client_id="acme", reason="fixed?")
        second = await amqp.control(action="retry", client_id="acme", message_id="X")
        await amqp.wait_event("item.succeeded", "acme", 2)
    assert first == {"ok": True, "outcome": "failed", "message_id": "X",
                     "error": "PUT /acme/products/X → HTTP 500: "
                              '{"message":"sku rejected by the shop"}'}
    assert second == {"ok": True, "outcome": "succeeded", "message_id": "X"}
    assert shop.skus() == ["X", "X", "X", "Y"]
    [resumed] = amqp.named("client.resumed", "acme")
    assert (resumed["how"], resumed["actor"]) == ("retry", "tester")


async def test_skip_with_a_stale_message_id_changes_nothing(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """skip naming another message answers ok false with the reason; the client stays parked."""
    shop.script["X"] = [422]
    async with running(_settings(prefix, tmp_path, shop, ["acme"])) as sup:
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        await amqp.wait_event("client.parked", "acme")
        answer = await amqp.control(action="skip", client_id="acme", message_id="OLD")
        await stays(lambda: shop.skus() == ["X"], 0.3, "the skip went through anyway")
        assert sup.consumers["acme"].state == "parked"
    assert answer == {"ok": False, "error": "message 'OLD' is not the parked item of client "
                                            "'acme' (the parked item is 'X')"}
    assert amqp.named("item.skipped") == []


@pytest.mark.parametrize("guard", [None, "X"], ids=["without-message-id", "with-message-id"])
async def test_skip_archives_the_parked_item_with_actor_and_reason_and_resumes(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, guard
):
    """The skipped item never runs again, lands in the archive, and the next item runs."""
    shop.script["X"] = [422]
    async with running(_settings(prefix, tmp_path, shop, ["acme"])):
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        await amqp.wait_event("client.parked", "acme")
        request: dict[str, Any] = {"action": "skip", "client_id": "acme", "reason": "duplicate",
                   "actor": "alice"}
        if guard:
            request["message_id"] = guard
        answer = await amqp.control(**request)
        await amqp.wait_event("item.succeeded", "acme")
    assert answer == {"ok": True, "message_id": "X"}
    assert shop.skus() == ["X", "Y"]
    [archived] = await amqp.queue_messages(amqp.topo.archive)
    assert archived.message_id == "X"
    assert archived.headers["x-s2s-skipped-by"] == "alice"
    assert archived.headers["x-s2s-skip-reason"] == "duplicate"
    [skipped] = amqp.named("item.skipped", "acme")
    assert (skipped["actor"], skipped["reason"]) == ("alice", "duplicate")
    [resumed] = amqp.named("client.resumed", "acme")
    assert resumed["how"] == "skip"


async def test_pause_stops_after_the_current_item_and_resume_goes_on(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Paused: the next item is held, not run; resume runs it and the rest in order."""
    async with running(_settings(prefix, tmp_path, shop, ["acme"])) as sup:
        await amqp.publish("acme", "A")
        await amqp.wait_event("item.succeeded", "acme")
        paused = await amqp.control(action="pause", client_id="acme", actor="bob")
        again = await amqp.control(action="pause", client_id="acme")
        await amqp.publish("acme", "B")
        await amqp.publish("acme", "C")
        await stays(lambda: shop.skus() == ["A"], 0.5, "an item ran while paused")
        assert sup.consumers["acme"].state == "paused"
        resumed = await amqp.control(action="resume", client_id="acme", actor="bob")
        await amqp.wait_event("item.succeeded", "acme", 3)
        not_paused = await amqp.control(action="resume", client_id="acme")
    assert paused == {"ok": True, "client_id": "acme", "state": "paused"}
    assert again == {"ok": False, "error": "client 'acme' is already paused"}
    assert resumed["ok"] is True
    assert not_paused == {"ok": False, "error": "client 'acme' is not paused"}
    assert shop.skus() == ["A", "B", "C"]
    assert amqp.named("client.paused", "acme")[0]["actor"] == "bob"
    assert amqp.named("client.resumed", "acme")[0]["how"] == "resume"


async def test_unknown_actions_and_clients_are_refused_and_change_nothing(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """ok false with a readable reason for every request that cannot be carried out."""
    async with running(_settings(prefix, tmp_path, shop, ["acme"])):
        answers = [
            await amqp.control(action="explode", client_id="acme"),
            await amqp.control(action="retry", client_id="nobody"),
            await amqp.control(action="retry", client_id="acme"),
            await amqp.control(action="skip"),
            await amqp.control(action="register", client_id="bad id!"),
        ]
    assert answers == [
        {"ok": False, "error": "unknown action 'explode'"},
        {"ok": False, "error": "client 'nobody' is not registered"},
        {"ok": False, "error": "client 'acme' is not parked"},
        {"ok": False, "error": "skip needs a client_id"},
        {"ok": False, "error": "invalid client id 'bad id!': use 1 to 64 characters from "
                               "A-Z a-z 0-9 _ -"},
    ]


async def test_register_creates_the_queue_and_the_daemon_consumes_it(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """A client registered by control message starts consuming at once; twice is harmless."""
    async with running(settings_for(prefix, tmp_path)):
        first = await amqp.control(action="register", client_id="newco")
        second = await amqp.control(action="register", client_id="newco")
        await amqp.publish("newco", type_="system.noop", payload={}, message_id="n1")
        await amqp.wait_event("item.succeeded", "newco")
    assert first == {"ok": True, "client_id": "newco", "created": True}
    assert second == {"ok": True, "client_id": "newco", "created": False}
    assert len(amqp.named("client.registered", "newco")) == 1


async def test_clients_registered_while_the_daemon_was_down_are_found_at_start_up(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Registered straight in the broker with no daemon running; the next daemon serves it."""
    await amqp.register("latecomer")
    await amqp.publish("latecomer", type_="system.noop", payload={}, message_id="L1")
    async with running(settings_for(prefix, tmp_path)) as sup:
        await amqp.wait_event("item.succeeded", "latecomer")
        assert "latecomer" in sup.consumers


async def test_clients_file_reload_registers_new_clients_without_dropping_work(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """A client added to the clients file is registered on reload (SIGHUP) and served."""
    settings = _settings(prefix, tmp_path, shop, ["acme"])
    async with running(settings) as sup:
        await amqp.publish("acme", "A1")
        assert settings.clients_file is not None
        settings.clients_file.write_text(clients_toml(shop.url, ["acme", "globex"]))
        await sup.reload()
        await amqp.publish("globex", "G1")
        await amqp.wait_event("item.succeeded", "globex")
        await amqp.wait_event("item.succeeded", "acme")
    assert sorted(shop.skus()) == ["A1", "G1"]


async def test_unrouted_items_are_kept_listed_and_replayed_in_original_order(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Items for an unknown client wait in unrouted; replay appends them in order after register."""
    async with running(_settings(prefix, tmp_path, shop, ["acme"])) as sup:
        for n in range(5):
            await amqp.publish("ghost", f"GH{n}")
        await amqp.publish("other", "OT0")
        listed = await amqp.control(action="list_unrouted")
        refused = await amqp.control(action="replay_unrouted", client_id="ghost")
        (tmp_path / "clients.toml").write_text(clients_toml(shop.url, ["acme", "ghost"]))
        await sup.reload()
        replayed = await amqp.control(action="replay_unrouted", client_id="ghost")
        await amqp.wait_event("item.succeeded", "ghost", 5)
        left = await amqp.control(action="list_unrouted")
    assert [(i["client_id"], i["message_id"]) for i in listed["items"]] == [
        *[("ghost", f"GH{n}") for n in range(5)], ("other", "OT0")]
    assert refused == {"ok": False, "error": "client 'ghost' is not registered"}
    assert replayed == {"ok": True, "client_id": "ghost", "replayed": 5}
    assert shop.skus("ghost") == [f"GH{n}" for n in range(5)]
    assert [i["message_id"] for i in left["items"]] == ["OT0"]


async def test_after_losing_the_broker_connection_work_resumes_and_parks_hold(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Connection closed by the broker: it reconnects, acme stays parked, globex goes on."""
    shop.script["X"] = [422]
    async with running(_settings(prefix, tmp_path, shop, ["acme", "globex"])) as sup:
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        await amqp.publish("globex", "G1")
        await amqp.wait_event("client.parked", "acme")
        await amqp.wait_event("item.succeeded", "globex")
        await close_connection(f"s2s-queue {sup.replica}")
        await wait_until(lambda: sup.recoveries >= 1 and sup.connected, 30,
                         "the daemon to reconnect its consumers")
        await wait_until(lambda: sup.consumers["acme"].state == "parked", 15,
                         "acme's parked item to be held again")
        await amqp.publish("globex", "G2")
        await wait_until(lambda: "G2" in shop.skus(), 15, "globex's next item")
        await stays(lambda: shop.skus("acme") == ["X"], 1.0, "acme's parked item ran again")
        retried = await amqp.control(action="retry", client_id="acme", message_id="X")
        await wait_until(lambda: "Y" in shop.skus(), 15, "acme to resume after retry")
    assert retried["outcome"] == "succeeded"
    assert len(amqp.named("client.parked", "acme")) == 1


async def test_each_unrouted_item_is_announced_once_even_with_a_routing_key_no_client_has(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """SPEC §6: `item.unrouted` on `item.unrouted.<client_id>` when an item lands in
    unrouted. A routing key that is no client id still gets its event (on the word
    `!invalid`, so no client's binding sees it) and the item is still kept."""
    routed: list[tuple[str, dict[str, Any]]] = []
    async with amqp.connection.channel() as channel:
        tap = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await tap.bind(amqp.topo.events, routing_key="item.unrouted.#")

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            routed.append((message.routing_key or "", orjson.loads(message.body)))

        await tap.consume(on_event, no_ack=True)
        async with running(_settings(prefix, tmp_path, shop, ["acme"])):
            await amqp.publish("ghost", "GH0")
            await amqp.publish_raw(b'{"sku": "E"}', "../clients/acme/pause?",
                                   message_id="EVIL", type="product.sync")
            await amqp.publish("acme", "A1")
            await amqp.wait_event("item.succeeded", "acme")
            await wait_until(lambda: len(routed) == 2, 10, "two item.unrouted events")
            await stays(lambda: len(routed) == 2, 0.5, "an unrouted item announced twice")
            listed = await amqp.control(action="list_unrouted")
    assert [(key, e["client_id"], e["message_id"], e["type"], e["queue"]) for key, e in routed] \
        == [("item.unrouted.ghost", "ghost", "GH0", "product.sync", "blocking"),
            ("item.unrouted.!invalid", "../clients/acme/pause?", "EVIL", "product.sync",
             "blocking")]
    assert [i["message_id"] for i in listed["items"]] == ["GH0", "EVIL"]
    assert shop.skus() == ["A1"]
