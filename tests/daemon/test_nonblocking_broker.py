"""The non-blocking queue end to end: delayed retries, failed items, retry/skip, HTTP."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import aio_pika
import aiohttp
import pytest

from tests.proxy import broker_proxy
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    close_connection,
    free_port,
    running,
    settings_for,
    stays,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)
CLIENTS = ["acme", "globex", "initech"]


def _settings(prefix, tmp_path, shop: FakeShop, **kw):
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, CLIENTS))
    kw.setdefault("nonblocking_retry_delays", "0.3,0.5")
    return settings_for(prefix, tmp_path, clients_file=path, **kw)


async def test_three_hundred_orders_over_several_clients_all_arrive_once(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Competing consumers deliver every order exactly once, to the right client's back office."""
    async with running(_settings(prefix, tmp_path, shop)):
        for n in range(300):
            await amqp.order(CLIENTS[n % 3], f"O{n:03d}")
        await wait_until(lambda: len(shop.seen) >= 300, 30, "300 orders at the back office")
        await stays(lambda: len(shop.seen) == 300, 0.3, "an order arrived twice")
    assert Counter(shop.skus()) == Counter(f"O{n:03d}" for n in range(300))
    assert all(s.path == f"/{s.client}/orders" and s.method == "POST" for s in shop.seen)
    assert {s.sku for s in shop.seen if s.client == "globex"} == {
        f"O{n:03d}" for n in range(1, 300, 3)}


async def test_a_422_goes_to_failed_after_one_attempt_with_status_and_body(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Permanent: one attempt, item.failed final, listed with error, attempts and payload."""
    shop.always["BAD"] = 422
    async with running(_settings(prefix, tmp_path, shop)) as sup:
        await amqp.order("acme", "BAD")
        [failed] = await amqp.wait_event("item.failed", "acme")
        listed = await amqp.control(action="list_failed", client_id="acme")
        await stays(lambda: shop.skus() == ["BAD"], 0.8, "a permanent failure was retried")
        assert sup.ops.failed("globex") == []
    error = 'POST /acme/orders → HTTP 422: {"message":"sku rejected by the shop"}'
    assert (failed["final"], failed["attempt"], failed["error"]) == (True, 1, error)
    [item] = listed["items"]
    assert (item["message_id"], item["client_id"], item["type"]) == (
        "BAD", "acme", "order.add_to_source")
    assert (item["error"], item["attempts"]) == (error, 1)
    assert item["payload"] == {"order": {"id": "BAD"}}
    assert item["failed_at"]


async def test_503_503_200_succeeds_on_the_third_attempt_and_never_fails(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Transient failures wait in the delay queues and run again; the third attempt succeeds."""
    shop.script["T"] = [503, 503]
    async with running(_settings(prefix, tmp_path, shop)) as sup:
        await amqp.order("acme", "T")
        [done] = await amqp.wait_event("item.succeeded", "acme", timeout=20)
        assert sup.ops.failed() == []
    assert done["attempts"] == 3
    assert shop.skus() == ["T", "T", "T"]
    assert [(e["attempt"], e["final"]) for e in amqp.named("item.failed")] == [
        (1, False), (2, False)]
    times = [s.at for s in shop.seen]
    assert times[1] - times[0] >= 0.3, "the first retry came before its delay"
    assert times[2] - times[1] >= 0.5, "the second retry came before its delay"


async def test_an_item_waiting_for_its_retry_holds_up_nothing(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """While one order waits 2 s for its retry, 200 others go through at full rate."""
    shop.script["SLOW"] = [503]
    settings = _settings(prefix, tmp_path, shop, nonblocking_retry_delays="2",
                         nonblocking_concurrency=1)
    async with running(settings):
        await amqp.order("acme", "SLOW")
        await wait_until(lambda: shop.skus() == ["SLOW"], 10, "the first attempt")
        started = time.monotonic()
        for n in range(200):
            await amqp.order("globex", f"G{n:03d}")
        await wait_until(lambda: len(set(shop.skus("globex"))) == 200, 20, "the other orders")
        others_done = time.monotonic() - started
        await wait_until(lambda: shop.skus("acme") == ["SLOW", "SLOW"], 10, "the retry")
    second_try = shop.seen[-1].at if shop.seen[-1].sku == "SLOW" else None
    last_other = max(s.at for s in shop.seen if s.client == "globex")
    assert others_done < 2.0, f"the others took {others_done:.2f} s: held up by the retry"
    assert second_try is None or last_other < second_try


async def test_retry_failed_runs_it_again_and_skip_failed_archives_it(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """After the fix, retry_failed arrives; skip_failed never arrives and leaves the list."""
    shop.script["FIX"] = [422]
    shop.always["DROP"] = 422
    async with running(_settings(prefix, tmp_path, shop)) as sup:
        await amqp.order("acme", "FIX")
        await amqp.order("globex", "DROP")
        await wait_until(lambda: len(sup.ops.failed()) == 2, 15, "two failed items")
        retried = await amqp.control(action="retry_failed", message_id="FIX", actor="alice")
        skipped = await amqp.control(action="skip_failed", message_id="DROP", reason="test")
        unknown = await amqp.control(action="retry_failed", message_id="NOPE")
        await wait_until(lambda: shop.skus("acme") == ["FIX", "FIX"], 15, "the retried item")
        await stays(lambda: shop.skus("globex") == ["DROP"], 0.5, "a skipped item ran")
        left = await amqp.control(action="list_failed")
    assert retried == {"ok": True, "message_id": "FIX", "client_id": "acme"}
    assert skipped == {"ok": True, "message_id": "DROP", "client_id": "globex"}
    assert unknown == {"ok": False, "error": "no failed item with message_id 'NOPE'"}
    assert left == {"ok": True, "items": []}
    [archived] = await amqp.queue_messages(amqp.topo.archive)
    assert (archived.message_id, archived.headers["x-s2s-skip-reason"]) == ("DROP", "test")
    assert amqp.named("item.skipped", "globex")[0]["queue"] == "nonblocking"


@pytest.mark.parametrize(("body", "error"), [
    (b'{"order": {}}', "payload is not valid for order.add_to_source: order: "
                       "needs an 'id'"),
    (b"[1]", "body is not a JSON object"),
])
async def test_bad_input_goes_straight_to_failed_without_retries(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, body, error
):
    """An invalid item is not retried: failed at once with the problem named."""
    async with running(_settings(prefix, tmp_path, shop)) as sup:
        async with amqp.connection.channel(publisher_confirms=True) as channel:
            exchange = await channel.get_exchange(amqp.topo.nonblocking, ensure=False)
            await exchange.publish(aio_pika.Message(
                body, content_type="application/json", message_id="B1",
                type="order.add_to_source", headers={"client_id": "acme"}), routing_key="acme")
        await wait_until(lambda: bool(sup.ops.failed()), 15, "the bad item in failed")
        [item] = sup.ops.failed()
    assert (item["error"], item["attempts"]) == (error, 1)
    assert shop.seen == []


async def test_failed_items_over_http_list_retry_and_skip(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """GET /api/v1/failed[?client_id=], POST /failed/{id}/retry|skip; unknown ids answer 404."""
    shop.script["H1"] = [422]
    shop.always["H2"] = 422
    settings = _settings(prefix, tmp_path, shop, http_port=free_port())
    headers = {"Authorization": "Bearer admin-token"}
    base = f"http://127.0.0.1:{settings.http_port}/api/v1"
    async with running(settings) as sup, aiohttp.ClientSession(headers=headers) as http:
        await amqp.order("acme", "H1")
        await amqp.order("globex", "H2")
        await wait_until(lambda: len(sup.ops.failed()) == 2, 15, "two failed items")
        async with http.get(f"{base}/failed?client_id=acme") as r:
            listed = (r.status, await r.json())
        async with http.post(f"{base}/failed/H1/retry") as r:
            retried = (r.status, await r.json())
        async with http.post(f"{base}/failed/H2/skip", json={"reason": "dup"}) as r:
            skipped = (r.status, await r.json())
        async with http.post(f"{base}/failed/H3/skip") as r:
            missing = (r.status, await r.json())
        await wait_until(lambda: shop.skus("acme") == ["H1", "H1"], 15, "the retried item")
    assert listed[0] == 200
    assert [i["message_id"] for i in listed[1]["items"]] == ["H1"]
    assert retried == (200, {"ok": True, "message_id": "H1", "client_id": "acme"})
    assert skipped == (200, {"ok": True, "message_id": "H2", "client_id": "globex"})
    assert missing == (404, {"ok": False, "error": "no failed item with message_id 'H3'"})


async def _fail_unacked(amqp: Broker, order_id: str) -> aio_pika.abc.AbstractChannel:
    """A replica that recorded an order's failure and died before its ack: the order is
    held unacked on a channel of the test's own, its `failed` record in the state log.
    Closing the channel hands the order back, redelivered."""
    from daemon.core.nonblocking import stored_message
    from daemon.core.records import Failed
    from daemon.core.state import append_record, declare_state_stream

    await declare_state_stream(amqp.connection, amqp.topo)
    await amqp.order("acme", order_id)
    channel = await amqp.connection.channel(publisher_confirms=True)
    queue = await channel.get_queue(amqp.topo.nonblocking, ensure=False)
    message = await queue.get(no_ack=False, timeout=5)
    assert message is not None
    assert message.message_id == order_id
    record = Failed(message_id=order_id, fid=uuid.uuid4().hex, client_id="acme",
                    type="order.add_to_source", error="HTTP 422 (a replica that died)",
                    attempts=1, failed_at="2026-11-29T00:00:00Z",
                    payload={"order": {"id": order_id}}, message=stored_message(message))
    await append_record(channel, amqp.topo, record, "dead-replica")
    return channel


async def _drained(amqp: Broker) -> None:
    async with amqp.connection.channel() as channel:
        queue = await channel.declare_queue(amqp.topo.nonblocking, passive=True)
        ready = queue.declaration_result.message_count
    assert ready == 0 or ready is None


async def test_a_recorded_failure_redelivered_after_its_retry_and_skip_never_runs_again(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Never run twice: a replica recorded the order's failure and died before the ack. An
    admin retries it (the retry fails too) and skips it. The producer's copy then comes
    back, redelivered: it is acked unrun, and nothing comes back into the failed list."""
    shop.always["TWICE"] = 422
    channel = await _fail_unacked(amqp, "TWICE")
    async with running(_settings(prefix, tmp_path, shop)) as sup:
        await wait_until(lambda: [i["message_id"] for i in sup.ops.failed()] == ["TWICE"],
                         15, "the recorded failure listed")
        retried = await amqp.control(action="retry_failed", message_id="TWICE")
        await wait_until(lambda: shop.skus() == ["TWICE"], 15, "the retried copy run")
        await amqp.wait_event("item.failed", "acme")
        await wait_until(lambda: len(sup.ops.failed()) == 1, 15, "the retry failed again")
        skipped = await amqp.control(action="skip_failed", message_id="TWICE")
        await wait_until(lambda: sup.ops.failed() == [], 15, "the skip")
        await channel.close()  # the dead replica's copy comes back, redelivered
        await wait_until(lambda: sup.state.view.copy_count("TWICE") == 1, 15,
                         "the redelivered copy claimed")
        await stays(lambda: shop.skus() == ["TWICE"] and sup.ops.failed() == [], 1.5,
                    "the redelivered copy of a failed, retried and skipped order ran again")
        await _drained(amqp)
    assert (retried["ok"], skipped["ok"]) == (True, True)
    [archived] = await amqp.queue_messages(amqp.topo.archive)
    assert archived.message_id == "TWICE"


async def test_the_copy_a_retry_sent_runs_again_when_it_is_interrupted(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Nothing lost: the copy that `retry_failed` sent is cut off mid-run (its connection
    closed) and comes back redelivered. It is not taken for the copy that failed before
    (same message id, same body): it runs, and the order arrives."""
    channel = await _fail_unacked(amqp, "AGAIN")
    await channel.close()  # redelivered; the recorded failure says it is done
    async with running(_settings(prefix, tmp_path, shop)) as sup:
        await wait_until(lambda: sup.state.view.copy_count("AGAIN") == 1, 15,
                         "the redelivered producer's copy claimed")
        await stays(lambda: shop.skus() == [], 0.5, "a recorded failure ran again")
        shop.delay = 3.0
        await amqp.control(action="retry_failed", message_id="AGAIN")
        await wait_until(lambda: shop.skus() == ["AGAIN"], 15, "the retried copy started")
        await close_connection(f"s2s-queue {sup.replica}")
        shop.delay = 0.0
        await amqp.wait_event("item.succeeded", "acme", timeout=30)
        await wait_until(lambda: sup.state.view.copy_count("AGAIN") == 2, 15,
                         "the retried copy redelivered and claimed")
        await wait_until(lambda: len(shop.skus()) == 2, 15, "the retried copy run again")
        assert sup.ops.failed() == []


async def test_the_pool_consumes_again_after_the_next_node_refuses_its_consume(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Node 1 goes and node 2 refuses the pool's first consume of the shared queue (as a
    cluster node may right after a failover): the pool consumes again and runs the orders
    published after. (`nonblocking.not_resumed` is logged; aio-pika reopens the channel the
    broker closed, and its reopen callback consumes again.)"""
    async with broker_proxy() as one, broker_proxy() as two:
        settings = _settings(prefix, tmp_path, shop, amqp_url=f"{one.url},{two.url}")
        async with running(settings) as sup:
            await amqp.order("acme", "O1")
            await wait_until(lambda: shop.skus() == ["O1"], 15, "the first order")
            two.refuse_consumes(amqp.topo.nonblocking, 1)
            one.refusing = True
            one.cut()
            await wait_until(lambda: two.consumes_refused == 1, 15, "the refused consume")
            await wait_until(lambda: sup.connected, 15, "the daemon on node 2")
            await amqp.order("acme", "O2")
            await wait_until(lambda: shop.skus() == ["O1", "O2"], 15,
                             "the order published after the refusal")
