"""The non-blocking queue with daemon processes: kill -9, restarts, graceful stops."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter

import pytest

from tests.support import (
    Broker,
    FakeShop,
    daemon_process,
    env_with_clients,
    free_port,
    scrape_metrics,
    stays,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)
CLIENTS = ["acme", "globex", "initech"]


@pytest.fixture(params=["1", "2"], ids=lambda n: f"processes={n}")
def processes(request: pytest.FixtureRequest) -> str:
    """Every test here runs with the pool in one process and in two (S2SQ_PROCESSES)."""
    return str(request.param)


def _env(prefix: str, tmp_path, shop: FakeShop, processes: str, **extra: str) -> dict[str, str]:
    return env_with_clients(prefix, tmp_path, shop, CLIENTS, S2SQ_PROCESSES=processes,
                            S2SQ_NONBLOCKING_RETRY_DELAYS="0.3,0.5", **extra)


async def test_failed_items_survive_kill_9_and_a_restart(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, processes
):
    """Failed items are in the broker, not the process: a new daemon lists and retries them."""
    shop.script["F1"] = [422]
    shop.always["F2"] = 422
    env = _env(prefix, tmp_path, shop, processes)
    async with daemon_process(env, tmp_path / "first.log") as first:
        await first.wait_logged("daemon.ready")
        await amqp.order("acme", "F1")
        await amqp.order("globex", "F2")
        await wait_until(lambda: len(amqp.named("item.failed")) == 2, 15, "two failures")
        first.signal(signal.SIGKILL)
        await first.wait_exit(10)
    async with daemon_process(env, tmp_path / "second.log") as second:
        await second.wait_logged("daemon.ready")
        listed = await amqp.control(action="list_failed")
        retried = await amqp.control(action="retry_failed", message_id="F1")
        await wait_until(lambda: shop.skus("acme") == ["F1", "F1"], 15, "the retried order")
    assert sorted(i["message_id"] for i in listed["items"]) == ["F1", "F2"]
    assert retried["ok"] is True


async def test_sigterm_under_load_runs_no_order_twice(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, processes
):
    """Graceful stop: running items finish, the rest go back, the next daemon does them once.

    The orders are published at once, not one confirm after the other: so, on a slow disk
    (a confirm every few ms), the daemon kept up and had run all 300 before the SIGTERM."""
    shop.delay = 0.05
    env = _env(prefix, tmp_path, shop, processes, S2SQ_NONBLOCKING_CONCURRENCY="8")
    async with daemon_process(env, tmp_path / "first.log") as first:
        await first.wait_logged("daemon.ready")
        await amqp.order(CLIENTS[0], "O000")  # opens the producer's channel, then the rest:
        await asyncio.gather(*(amqp.order(CLIENTS[n % 3], f"O{n:03d}") for n in range(1, 300)))
        await wait_until(lambda: len(shop.seen) >= 50, 30, "50 orders to arrive")
        first.signal(signal.SIGTERM)
        assert await first.wait_exit(30) == 0
    assert len(shop.seen) < 300, "all done before SIGTERM: the test proved nothing"
    async with daemon_process(env, tmp_path / "second.log") as second:
        await wait_until(lambda: len(set(shop.skus())) == 300, 60, "all 300 orders")
        await stays(lambda: len(shop.seen) == 300, 0.5, "an order ran twice")
        second.signal(signal.SIGTERM)
        assert await second.wait_exit(30) == 0
    assert [sku for sku, n in Counter(shop.skus()).items() if n > 1] == []


@pytest.mark.slow
async def test_kill_9_at_random_points_while_moving_items_loses_nothing(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, processes
):
    """Killed five times under load with retries and failures: every order ends done or failed."""
    rng = random.Random(4)
    orders = [f"N{n:03d}" for n in range(300)]
    for n, order in enumerate(orders):
        if n % 10 == 3:
            shop.script[order] = [503, 503]  # succeeds on the third attempt
        elif n % 10 == 7:
            shop.always[order] = 422  # fails for good
    shop.delay = 0.01
    env = _env(prefix, tmp_path, shop, processes, S2SQ_NONBLOCKING_CONCURRENCY="8")
    for n, order in enumerate(orders):
        await amqp.order(CLIENTS[n % 3], order)
    for round_ in range(5):
        async with daemon_process(env, tmp_path / f"round{round_}.log") as daemon:
            await daemon.wait_logged("daemon.ready")
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            daemon.signal(signal.SIGKILL)
            await daemon.wait_exit(10)
    async with daemon_process(env, tmp_path / "last.log") as last:
        await last.wait_logged("daemon.ready")
        failing = {o for n, o in enumerate(orders) if n % 10 == 7}
        failed_now: set[str] = set()
        for _ in range(120):
            answer = await amqp.control(action="list_failed")
            failed_now = {i["message_id"] for i in answer["items"]}
            seen = Counter(shop.skus())
            if failed_now == failing and all(seen[o] >= (3 if n % 10 == 3 else 1)
                                             for n, o in enumerate(orders)):
                break
            await asyncio.sleep(0.5)
        assert failed_now == failing, f"failed {sorted(failed_now)}, expected {sorted(failing)}"
        last.signal(signal.SIGTERM)
        assert await last.wait_exit(30) == 0
    seen = Counter(shop.skus())
    for n, order in enumerate(orders):
        expected = 3 if n % 10 == 3 else 1
        # at-least-once: each of the 5 kills may repeat one attempt of an item in flight
        assert expected <= seen[order] <= expected + 5, f"{order}: {seen[order]} attempts"


async def test_a_worker_process_killed_mid_item_is_restarted_and_its_items_run_again(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """S2SQ_PROCESSES=2: both processes take items; a worker killed with items in hand comes
    back, and the broker hands its items to a live process."""
    shop.delay = 1.0
    env = _env(prefix, tmp_path, shop, "2", S2SQ_NONBLOCKING_CONCURRENCY="4")
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        assert daemon.count("worker.ready") == 1
        [started] = daemon.logged("worker.started")
        for n in range(24):
            await amqp.order(CLIENTS[n % 3], f"K{n:02d}")
        # 4 in flight per process: more than 4 at once means the worker is taking items.
        await wait_until(lambda: len(shop.running) == 8, 15, "8 orders at once, 4 per process")
        held = set(shop.running)
        os.kill(started["pid"], signal.SIGKILL)
        await wait_until(lambda: daemon.count("worker.exited", worker=1) == 1, 15,
                         "the supervisor to see its worker die")
        await wait_until(lambda: daemon.count("worker.ready") == 2, 30, "the worker back")
        await wait_until(lambda: len(set(shop.skus())) == 24, 60, "all 24 orders")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0
    seen = Counter(shop.skus())
    again = {sku for sku in held if seen[sku] > 1}
    assert len(again) == 4, f"the killed worker's 4 orders run again: {held}, {seen}"
    assert daemon.count("worker.stopped") == 1
    assert daemon.count("workers.stopped") == 1


async def test_sighup_reaches_every_worker_process(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """`systemctl reload`: the supervisor and each worker read the clients file again."""
    env = _env(prefix, tmp_path, shop, "3")
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        assert daemon.count("worker.ready") == 2
        daemon.signal(signal.SIGHUP)
        await wait_until(lambda: daemon.count("clients_file.reloaded") == 3, 15,
                         "three processes to reload the clients file")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0
    assert {line.get("worker") for line in daemon.logged("clients_file.reloaded")} == {
        None, 1, 2}


async def test_metrics_count_the_items_of_every_worker_process(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """S2SQ_PROCESSES=2: `/metrics` on the supervisor counts the worker's items too."""
    shop.delay = 0.3
    port = free_port()
    env = _env(prefix, tmp_path, shop, "2", S2SQ_NONBLOCKING_CONCURRENCY="4",
               S2SQ_HTTP_PORT=str(port))
    succeeded = ('s2s_items_total{outcome="succeeded",queue="nonblocking",'
                 'type="order.add_to_source"}')
    calls = ('s2s_handler_duration_seconds_count{queue="nonblocking",'
             'type="order.add_to_source"}')
    scraped: dict[str, float] = {}
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        for n in range(40):
            await amqp.order(CLIENTS[n % 3], f"M{n:02d}")
        await wait_until(lambda: len(shop.running) == 8, 15, "8 orders at once, 4 per process")
        await wait_until(lambda: len(set(shop.skus())) == 40, 30, "all 40 orders")
        for _ in range(100):  # the worker reports about every second
            scraped = await scrape_metrics(port)
            if scraped.get(succeeded) == 40:
                break
            await asyncio.sleep(0.1)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0
    assert scraped.get(succeeded) == 40, scraped
    assert scraped.get(calls) == 40
