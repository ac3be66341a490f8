"""Long scenarios for durable parking: consumer_timeout, and random kill -9 of replicas."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from contextlib import AsyncExitStack
from datetime import datetime

import pytest

from tests.support import (
    Broker,
    DaemonProcess,
    FakeShop,
    clients_toml,
    daemon_env,
    daemon_process,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _rabbit_eval(expression: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", "eval", expression], check=True, timeout=60,
                          capture_output=True, text=True)
    return done.stdout.strip()


async def test_consumer_timeout_neither_reruns_a_park_nor_runs_an_item_twice_at_once(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """consumer_timeout = 5 s for 75 s under load: the park holds; nothing overlaps or is lost."""
    clients = ["acme", *[f"busy{n}" for n in range(5)]]
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, clients))
    shop.always["X"] = 422
    shop.delay = 0.02
    original = _rabbit_eval("application:get_env(rabbit, consumer_timeout).")
    published: list[str] = []
    try:
        _rabbit_eval("application:set_env(rabbit, consumer_timeout, 5000).")
        env = daemon_env(prefix, S2SQ_CLIENTS_FILE=str(path))
        async with daemon_process(env, tmp_path / "daemon.log") as daemon:
            await daemon.wait_logged("daemon.ready")
            await amqp.publish("acme", "X")
            await amqp.wait_event("client.parked", "acme")
            deadline = time.monotonic() + 75
            n = 0
            while time.monotonic() < deadline:
                sku = f"busy{n % 5}-{n:05d}"
                await amqp.publish(f"busy{n % 5}", sku)
                published.append(sku)
                n += 1
                await asyncio.sleep(0.05)
            await wait_until(lambda: set(published) <= set(shop.skus()), 60, "every busy item")
            status = await amqp.control(action="status", client_id="acme")
            lost = daemon.count("channel.lost")
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait_exit(30) == 0
    finally:
        restore = (f"application:set_env(rabbit, consumer_timeout, {original[4:-1]})."
                   if original.startswith("{ok,") else
                   "application:unset_env(rabbit, consumer_timeout).")
        _rabbit_eval(restore)
    assert lost >= 1, "the consumer timeout never fired: the test proved nothing"
    assert shop.skus("acme") == ["X"], "the parked item ran again"
    assert status["client"]["state"] == "parked"
    assert shop.overlaps == [], f"ran twice at the same time: {shop.overlaps}"
    assert len(amqp.named("client.parked", "acme")) == 1


def _check_order(skus: list[str], client: str) -> None:
    """Each request is the latest item again (an interrupted one) or the next one."""
    latest = -1
    for sku in skus:
        index = int(sku.rsplit("-", 1)[1])
        assert index in (latest, latest + 1), f"{client}: {index} after {latest} in {skus}"
        latest = max(latest, index)


async def test_twenty_random_kill_9s_of_two_replicas_lose_nothing_and_keep_order(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """50 clients, some parking, two replicas killed at random 20 times: all ends well."""
    rng = random.Random(20261128)
    clients = [f"c{n:02d}" for n in range(50)]
    parking = set(rng.sample(clients, 6))
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, clients))
    shop.delay = 0.02
    items = {c: [f"{c}-{i:03d}" for i in range(30)] for c in clients}
    for client in parking:
        shop.always[items[client][10]] = 422
    await amqp.register(*clients)

    async def steady_load() -> None:
        for i in range(30):
            for client in clients:
                await amqp.publish(client, items[client][i])
            await asyncio.sleep(0.5)

    env = daemon_env(prefix, S2SQ_CLIENTS_FILE=str(path))
    logs: list[DaemonProcess] = []
    async with AsyncExitStack() as stack:
        async def start(n: int) -> DaemonProcess:
            daemon = await stack.enter_async_context(
                daemon_process(env, tmp_path / f"daemon{n}.log"))
            logs.append(daemon)
            return daemon

        live = [await start(0), await start(1)]
        load = asyncio.ensure_future(steady_load())
        for cycle in range(20):
            if cycle == 10:
                assert not load.done(), "the load ended before half the kills: proves little"
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            victim = live.pop(rng.randrange(2))
            victim.signal(signal.SIGKILL)
            await victim.wait_exit(10)
            live.append(await start(cycle + 2))

        def settled() -> bool:
            seen = set(shop.skus())
            return all((set(items[c][:11]) if c in parking else set(items[c])) <= seen
                       for c in clients)

        await load
        await wait_until(settled, 120, "every client to finish or park")
        await asyncio.sleep(1.0)
        status = await amqp.control(action="status")
        for daemon in live:
            daemon.signal(signal.SIGTERM)
        for daemon in live:
            assert await daemon.wait_exit(30) == 0
    states = {c["client_id"]: c["state"] for c in status["clients"]}
    assert {c for c, s in states.items() if s == "parked"} == parking
    assert sum(d.count("item.still_parked") for d in logs) >= 1, "no park was ever taken over"
    for client in clients:
        skus = shop.skus(client)
        _check_order(skus, client)
        expected = items[client][:11] if client in parking else items[client]
        assert sorted(set(skus)) == expected, f"{client}: lost or extra items"
    since = {c["client_id"]: c["parked"]["since"] for c in status["clients"] if c["parked"]}
    for client in parking:
        bad = items[client][10]
        late = [s for s in shop.seen if s.sku == bad and s.at > _when(since[client]) + 0.001]
        assert late == [], f"{client}'s parked item ran again without a retry"
        assert len(amqp.named("client.parked", client)) >= 1, f"{client}'s park unannounced"


def _when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
