"""Several replicas share the work (issue 13, docs/replicas.md): real processes, real broker."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from contextlib import AsyncExitStack

import pytest

from daemon.broker.replicas import preferred
from tests.support import (
    Broker,
    DaemonProcess,
    FakeShop,
    active_consumers,
    daemon_process,
    env_with_clients,
    stays,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)


async def _replica_ids(daemons: list[DaemonProcess]) -> list[str]:
    return [(await d.wait_logged("daemon.ready", 90))["replica"] for d in daemons]


async def _active(prefix: str) -> dict[str, str]:
    """{client: replica whose consumer is active on its queue}."""
    queues = await asyncio.to_thread(active_consumers, f"{prefix}.blocking.")
    out = {}
    for queue, connection in queues.items():
        client = queue.removeprefix(f"{prefix}.blocking.")
        # The pool's connection is "s2s-queue <replica> consumers" (daemon.supervisor).
        out[client] = connection.removeprefix("s2s-queue ").removesuffix(" consumers")
    return out


async def _until_active_on(prefix: str, want: dict[str, str], timeout: float) -> dict[str, str]:
    """Poll the broker until every client in `want` is active on its replica there."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        active = await _active(prefix)
        if all(active.get(c) == r for c, r in want.items()):
            return active
        if asyncio.get_running_loop().time() > deadline:
            wrong = {c: (active.get(c), r) for c, r in want.items() if active.get(c) != r}
            raise AssertionError(f"{len(wrong)} clients not active where they should be"
                                 f" (active, wanted): {dict(list(wrong.items())[:10])}")
        await asyncio.sleep(1.0)


@pytest.mark.parametrize(("count", "start"), [(2, "together"), (3, "together"),
                                              (3, "one after another")])
async def test_the_active_consumers_are_spread_over_the_replicas(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, count, start
):
    """60 clients, 2 or 3 replicas: each client ends active on the replica it prefers, each
    replica on a fair share, and an item published to each runs there."""
    clients = [f"c{n:02}" for n in range(60)]
    env = env_with_clients(prefix, tmp_path, shop, clients, S2SQ_REPLICA_SETTLE="1.5")
    async with AsyncExitStack() as stack:
        daemons = []
        for n in range(count):
            daemon = await stack.enter_async_context(
                daemon_process(env, tmp_path / f"replica{n}.log"))
            daemons.append(daemon)
            if start == "one after another":
                await daemon.wait_logged("daemon.ready", 90)
                await asyncio.sleep(2.0)  # it has placed everything and is active everywhere
        ids = await _replica_ids(daemons)
        want = {c: preferred(c, ids) for c in clients}
        active = await _until_active_on(prefix, want, timeout=90)
        for client in clients:
            await amqp.publish(client, f"{client}-1")
        await wait_until(lambda: sum(len(d.logged("item.succeeded")) for d in daemons)
                         >= len(clients), 30, "one item per client")
        ran = {line["client_id"]: ids[n] for n, d in enumerate(daemons)
               for line in d.logged("item.succeeded")}
    shares = Counter(active[c] for c in clients)
    assert all(shares[r] >= len(clients) / count / 2 for r in ids), shares
    assert ran == want


async def test_replicas_that_join_while_items_flow_take_their_share_without_a_run_twice(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """One replica serves 30 busy clients; two more join: the clients they prefer move to
    them while items run, and every item runs once, in order (no kill: not even once more)."""
    clients = [f"c{n:02}" for n in range(30)]
    env = env_with_clients(prefix, tmp_path, shop, clients, S2SQ_REPLICA_SETTLE="1.5")
    shop.delay = 0.05
    published: dict[str, list[str]] = {c: [] for c in clients}
    flowing = True

    async def publish() -> None:
        n = 0
        while flowing:
            for client in clients:
                published[client].append(await amqp.publish(client, f"{client}-{n}"))
            n += 1
            await asyncio.sleep(0.05)

    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(daemon_process(env, tmp_path / "replica0.log"))
        await first.wait_logged("daemon.ready", 90)
        publisher = asyncio.ensure_future(publish())
        try:
            await wait_until(lambda: len(shop.seen) >= 60, 30, "items flowing")
            daemons = [first] + [await stack.enter_async_context(
                daemon_process(env, tmp_path / f"replica{n}.log")) for n in (1, 2)]
            ids = await _replica_ids(daemons)
            await _until_active_on(prefix, {c: preferred(c, ids) for c in clients}, 90)
        finally:
            flowing = False
            await publisher
        await wait_until(lambda: all(shop.skus(c)[-1:] == published[c][-1:] for c in clients),
                         60, "the last item of every client")
        cycled = [d.count("channel.cycled") for d in daemons]
        ran_on = {ids[n] for n, d in enumerate(daemons) if d.logged("item.succeeded")}
    assert cycled[0] >= 1, "the first replica moved nothing"
    assert ran_on == set(ids), "a replica ran nothing"
    for client in clients:
        assert shop.skus(client) == published[client], f"{client}: {shop.skus(client)}"
    assert shop.overlaps == []


async def test_kill_9_of_a_replica_moves_its_clients_to_survivors_and_keeps_its_parks(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """3 replicas, 30 clients, items flowing, 4 clients parked on one replica: kill -9 it.
    Every client goes on on a survivor in order; the parks are held there, unrun; no item
    runs twice but the ones the kill interrupted (at-least-once, SPEC section 4)."""
    clients = [f"c{n:02}" for n in range(30)]
    env = env_with_clients(prefix, tmp_path, shop, clients, S2SQ_REPLICA_SETTLE="1.5")
    shop.delay = 0.05
    async with AsyncExitStack() as stack:
        daemons = [await stack.enter_async_context(
            daemon_process(env, tmp_path / f"replica{n}.log")) for n in range(3)]
        ids = await _replica_ids(daemons)
        active = await _until_active_on(prefix, {c: preferred(c, ids) for c in clients}, 90)
        before = active
        victim = daemons[0]
        parked = [c for c in clients if active[c] == ids[0]][:4]
        assert len(parked) == 4, active
        for client in parked:
            shop.script[f"{client}-P"] = [422]
            await amqp.publish(client, f"{client}-P")
        for client in parked:
            await amqp.wait_event("client.parked", client)
        items = {c: [f"{c}-{i}" for i in range(8)] for c in clients}
        for i in range(8):
            for client in clients:
                await amqp.publish(client, items[client][i])
        await wait_until(lambda: len(shop.seen) >= 60, 30, "items flowing")
        victim.signal(signal.SIGKILL)
        interrupted = set(shop.running)  # requests of the victim cut off with it
        await victim.wait_exit(10)
        survivors = dict(zip(ids[1:], daemons[1:], strict=True))
        flowing = [c for c in clients if c not in parked]
        await wait_until(lambda: all(set(shop.skus(c)) >= set(items[c]) for c in flowing), 60,
                         "every item of every client that is not parked")
        def held() -> bool:
            return all(any(d.count("item.still_parked", client_id=c) for d in survivors.values())
                       for c in parked)

        await wait_until(held, 30, "the survivors to hold every park")
        await stays(lambda: all(shop.skus(c) == [f"{c}-P"] for c in parked), 2.0,
                    "a parked client ran an item")
        active = await _active(prefix)
        status = await amqp.control(action="status")
    assert set(active) == set(clients)
    assert set(active.values()) <= set(survivors), active
    states = {c["client_id"]: c for c in status["clients"]}
    for client in parked:
        assert states[client]["state"] == "parked"
        assert states[client]["parked"]["message_id"] == f"{client}-P"
    for client in flowing:
        seen = shop.skus(client)
        once = [sku for n, sku in enumerate(seen) if n == 0 or seen[n - 1] != sku]
        assert once == items[client], f"{client} out of order: {seen}"
        twice = {sku for sku, n in Counter(seen).items() if n > 1}
        assert len(twice) <= 1, f"{client}: {twice} ran twice"
        assert not twice or before[client] == ids[0] or twice <= interrupted, (
            f"{client}: {twice} ran twice, not on the killed replica")
