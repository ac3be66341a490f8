"""The failed store and the state log with daemon processes: hostile orders, 20,000 failures.

Holes 0, 1 and 6 of the release-2 review, tried the way they were found:
black-box, against a running daemon on the real broker.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage

from daemon.broker.producer import item_message
from tests.support import (
    Broker,
    FakeShop,
    daemon_process,
    env_with_clients,
    free_port,
    scrape_metrics,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)
TOKEN = "admin-token"


def _env(prefix: str, tmp_path, shop: FakeShop, port: int, **extra: str) -> dict[str, str]:
    return env_with_clients(prefix, tmp_path, shop, ["acme", "globex"],
                            S2SQ_HTTP_PORT=str(port), S2SQ_ADMIN_TOKEN=TOKEN,
                            S2SQ_NONBLOCKING_RETRY_DELAYS="0.3", **extra)


async def _get(port: int, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}{path}",
            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200, await response.text()
        return orjson.loads(await response.read())


async def _publish_raw(amqp: Broker, exchange: str, client: str, body: bytes,
                       message_id: str, type_: str, **headers: Any) -> None:
    async with amqp.connection.channel(publisher_confirms=True) as channel:
        target = await channel.get_exchange(exchange, ensure=False)
        message = item_message(client, type_, body, message_id=message_id)
        message.headers.update(headers)
        await target.publish(message, routing_key=client)


async def test_orders_json_cannot_carry_fail_and_free_their_slots(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Hole 1: 12 orders with integers past 64 bits, concurrency 4: listed as failed, and
    later orders (one with a negative attempt header) still arrive.

    The old pool left such a delivery held when writing its failed record raised:
    four of them stopped every later order for good.
    """
    port = free_port()
    env = _env(prefix, tmp_path, shop, port, S2SQ_NONBLOCKING_CONCURRENCY="4")
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        for n in range(12):
            body = b'{"order": {"id": "H%d", "ref": 100000000000000000000}}' % n
            await _publish_raw(amqp, amqp.topo.nonblocking, "acme", body, f"H{n}",
                               "order.add_to_source")
        await _publish_raw(amqp, amqp.topo.nonblocking, "acme", b'{"order": {"id": "NEG"}}',
                           "NEG", "order.add_to_source", **{"x-s2s-attempt": -5})
        for n in range(5):
            await amqp.order("globex", f"G{n}")
        await wait_until(lambda: {"NEG", *(f"G{n}" for n in range(5))} <= set(shop.skus()),
                         20, "the orders published after the hostile ones")
        await wait_until(lambda: len(amqp.named("item.failed", "acme")) >= 12, 20,
                         "12 failures")
        listed = await _get(port, "/api/v1/failed?client_id=acme")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0
    failed = {item["message_id"]: item for item in listed["items"]}
    assert sorted(failed) == sorted(f"H{n}" for n in range(12))
    assert "Integer exceeds 64-bit range" in failed["H3"]["error"]
    assert failed["H3"]["payload"]["order"]["ref"] == "100000000000000000000"


async def test_a_park_json_cannot_carry_is_recorded_and_survives_kill_9(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Hole 1, blocking: the park of a product with a 70-bit integer is in the log, so the
    API shows it and a restart holds it again instead of running it."""
    port = free_port()
    env = _env(prefix, tmp_path, shop, port)
    body = b'{"sku": "BIG", "product": {"weight": 1000000000000000000000}}'
    async with daemon_process(env, tmp_path / "first.log") as first:
        await first.wait_logged("daemon.ready")
        await _publish_raw(amqp, amqp.topo.blocking, "acme", body, "BIG", "product.sync")
        await amqp.publish("acme", "AFTER")
        await amqp.wait_event("client.parked", "acme")
        await wait_until(lambda: first.count("park.announced") == 1, 10, "the park announced")
        before = await _get(port, "/api/v1/clients/acme")
        first.signal(signal.SIGKILL)
        await first.wait_exit(10)
    async with daemon_process(env, tmp_path / "second.log") as second:
        await second.wait_logged("item.still_parked")
        await second.wait_logged("daemon.ready")
        after = await _get(port, "/api/v1/clients/acme")
        second.signal(signal.SIGTERM)
        assert await second.wait_exit(30) == 0
    assert before["state"] == after["state"] == "parked"
    assert after["parked"]["message_id"] == "BIG"
    assert shop.skus("acme") == [], "the parked item ran again, or the next one ran"


async def _stream_sizes(amqp: Broker, name: str) -> list[int]:
    """The size of every message of a stream, read from the first one kept."""
    sizes: list[int] = []
    async with amqp.connection.channel() as channel:
        await channel.set_qos(prefetch_count=2000)
        queue = await channel.get_queue(name, ensure=False)
        marker = uuid.uuid4().hex.encode()
        await channel.default_exchange.publish(aio_pika.Message(marker), routing_key=name)
        done = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            await message.ack()
            sizes.append(len(message.body))
            if message.body == marker:
                done.set()

        tag = await queue.consume(take, arguments={"x-stream-offset": "first"})
        await asyncio.wait_for(done.wait(), 120)
        await queue.cancel(tag)
    return sizes


@pytest.mark.slow
async def test_twenty_thousand_failed_orders_are_all_listed_and_survive_a_restart(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Holes 0 and 6: 20,000 failed 1 KB orders at concurrency 32 — the running daemon
    lists every one; a park written after them survives kill -9; the restarted daemon
    lists all 20,000 again; no message of the state log is over 1 MiB."""
    shop.reject_all = 422
    port = free_port()
    env = _env(prefix, tmp_path, shop, port, S2SQ_STATE_SNAPSHOT_EVERY="2000")
    total = 20_000
    async with daemon_process(env, tmp_path / "first.log") as first:
        await first.wait_logged("daemon.ready")
        async with amqp.connection.channel(publisher_confirms=True) as channel:
            exchange = await channel.get_exchange(amqp.topo.nonblocking, ensure=False)
            for start in range(0, total, 200):
                await asyncio.gather(*(
                    exchange.publish(item_message(
                        "acme", "order.add_to_source",
                        {"order": {"id": f"O{n:05d}", "lines": "x" * 1000}},
                        message_id=f"O{n:05d}"), routing_key="acme")
                    for n in range(start, start + 200)))

        async def failed_gauge() -> float:
            metrics = await scrape_metrics(port)
            return metrics.get("s2s_failed_items", 0.0)

        deadline = asyncio.get_running_loop().time() + 200
        while await failed_gauge() < total:
            assert asyncio.get_running_loop().time() < deadline, "not all orders failed"
            await asyncio.sleep(1)
        listed = await _get(port, "/api/v1/failed")
        shop.always["X"] = 422
        await amqp.publish("acme", "X")
        await amqp.wait_event("client.parked", "acme", timeout=30)
        first.signal(signal.SIGKILL)
        await first.wait_exit(10)
    async with daemon_process(env, tmp_path / "second.log") as second:
        await second.wait_logged("daemon.ready", timeout=120)
        again = await _get(port, "/api/v1/failed")
        client = await _get(port, "/api/v1/clients/acme")
        second.signal(signal.SIGTERM)
        assert await second.wait_exit(60) == 0
    sizes = await _stream_sizes(amqp, amqp.topo.state)
    assert len(listed["items"]) == total
    assert {i["message_id"] for i in again["items"]} == {f"O{n:05d}" for n in range(total)}
    assert client["state"] == "parked"
    assert client["parked"]["message_id"] == "X"
    assert shop.skus("acme").count("X") == 1
    assert max(sizes) < 1_048_576, f"a state record of {max(sizes)} bytes"
