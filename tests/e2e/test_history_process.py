"""The history of what ran with the daemon as a process: the worker processes' outcomes
(S2SQ_PROCESSES) reach it too, and a SIGTERM writes what was still buffered."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import pytest

from tests.support import (
    Broker,
    FakeShop,
    daemon_process,
    env_with_clients,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


async def _history(port: int, client: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/clients/{client}/history?limit=1000"
    headers = {"Authorization": "Bearer admin-token"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_every_worker_process_writes_its_outcomes_to_the_history(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """S2SQ_PROCESSES=2: all 30 orders are in acme's history, whichever process ran them;
    after a SIGTERM and a restart they are all still there."""
    shop.delay = 0.2
    port = free_port()
    env = env_with_clients(prefix, tmp_path, shop, ["acme"], S2SQ_PROCESSES="2",
                           S2SQ_NONBLOCKING_CONCURRENCY="2", S2SQ_HTTP_PORT=str(port),
                           S2SQ_ADMIN_TOKEN="admin-token")
    orders = {f"O{n:02d}" for n in range(30)}
    seen: dict[str, Any] = {}
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        for order in sorted(orders):
            await amqp.order("acme", order)
        await wait_until(lambda: len(shop.running) == 4, 15,
                         "4 orders at once: 2 in each process")
        await wait_until(lambda: set(shop.skus()) == orders, 30, "all 30 orders")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0
    async with daemon_process(env, tmp_path / "daemon2.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        for _ in range(100):  # bounded: the index reads the stream back after start-up
            seen = await _history(port, "acme")
            if len(seen["items"]) == len(orders):
                break
            await asyncio.sleep(0.1)
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0
    assert {i["message_id"] for i in seen["items"]} == orders
    assert {(i["outcome"], i["attempts"], i["type"]) for i in seen["items"]} == {
        ("succeeded", 1, "order.add_to_source")}
