"""The daemon as a real process: SIGTERM under load, a park across a restart, SIGHUP."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    daemon_env,
    daemon_process,
    env_with_clients,
    stays,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)
CLIENTS = ["acme", "globex", "initech"]


def _env(prefix: str, tmp_path, shop: FakeShop, clients: list[str]) -> dict[str, str]:
    return env_with_clients(prefix, tmp_path, shop, clients)


async def test_sigterm_under_load_loses_nothing_and_runs_nothing_twice(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Stop mid-stream: running items finish, the rest wait; the next daemon does them once each."""
    shop.delay = 0.02
    env = _env(prefix, tmp_path, shop, CLIENTS)
    expected = {c: [f"{c}-{n:03d}" for n in range(100)] for c in CLIENTS}
    await amqp.register(*CLIENTS)
    for n in range(100):
        for client in CLIENTS:
            await amqp.publish(client, expected[client][n])
    async with daemon_process(env, tmp_path / "first.log") as first:
        await wait_until(lambda: len(shop.seen) >= 60, 30, "60 items to reach the shop")
        first.signal(signal.SIGTERM)
        assert await first.wait_exit(30) == 0
        stopped = first.logged("daemon.stopped")
    at_stop = len(shop.seen)
    assert stopped, "the first daemon did not log its orderly stop"
    assert at_stop < 300, "the load finished before SIGTERM: the test proved nothing"
    async with daemon_process(env, tmp_path / "second.log") as second:
        await second.wait_logged("daemon.ready")
        await wait_until(lambda: len(set(shop.skus())) == 300, 60, "all 300 items")
        await stays(lambda: len(shop.seen) == 300, 0.5, "an item ran a second time")
        second.signal(signal.SIGTERM)
        assert await second.wait_exit(30) == 0
    twice = [sku for sku, n in Counter(shop.skus()).items() if n > 1]
    assert twice == [], f"ran twice: {twice}"
    for client in CLIENTS:
        assert shop.skus(client) == expected[client], f"{client}'s order broke"


async def test_a_parked_client_stays_parked_across_a_restart_without_running_again(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Park, stop, start: the same item is held with its error, not re-run, not announced again."""
    shop.script["X"] = [422]
    env = _env(prefix, tmp_path, shop, ["acme"])
    async with daemon_process(env, tmp_path / "first.log") as first:
        await first.wait_logged("daemon.ready")
        await amqp.publish("acme", "X")
        await amqp.publish("acme", "Y")
        [parked] = await amqp.wait_event("client.parked", "acme")
        first.signal(signal.SIGTERM)
        assert await first.wait_exit(30) == 0
    async with daemon_process(env, tmp_path / "second.log") as second:
        ready = await second.wait_logged("daemon.ready")
        await second.wait_logged("item.still_parked")
        await stays(lambda: shop.skus() == ["X"], 2.0, "the parked item ran again")
        status = await amqp.control(action="status", client_id="acme")
        retried = await amqp.control(action="retry", client_id="acme", message_id="X")
        await amqp.wait_event("item.succeeded", "acme", 2)
    assert ready["parked"] == 1
    assert status["client"]["state"] == "parked"
    assert status["client"]["parked"]["message_id"] == "X"
    assert status["client"]["parked"]["error"] == parked["error"]
    assert status["client"]["parked"]["since"] <= parked["at"]
    assert len(amqp.named("client.parked", "acme")) == 1
    assert retried["outcome"] == "succeeded"
    assert shop.skus() == ["X", "X", "Y"]


async def test_sighup_rereads_the_clients_file_and_serves_new_clients(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """A client added to the file is registered on SIGHUP while the others keep working."""
    env = _env(prefix, tmp_path, shop, ["acme"])
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        (tmp_path / "clients.toml").write_text(clients_toml(shop.url, ["acme", "globex"]))
        daemon.signal(signal.SIGHUP)
        await daemon.wait_logged("clients_file.reloaded")
        await amqp.publish("globex", "G1")
        await amqp.publish("acme", "A1")
        await wait_until(lambda: sorted(shop.skus()) == ["A1", "G1"], 15, "both items")
        (tmp_path / "clients.toml").write_text("[clients.bad id]\n")
        daemon.signal(signal.SIGHUP)
        await daemon.wait_logged("clients_file.invalid")
        await amqp.publish("acme", "A2")
        await wait_until(lambda: "A2" in shop.skus(), 15, "work after a bad reload")
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0


async def test_a_bad_clients_file_stops_start_up_with_a_clear_error(prefix, tmp_path, amqp):
    """The daemon refuses to start on an invalid clients file and says why in one line."""
    path = tmp_path / "clients.toml"
    path.write_text("[clients.acme]\nnmae = 'typo'\n")
    env = daemon_env(prefix, S2SQ_CLIENTS_FILE=str(path))
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        assert await daemon.wait_exit(30) == 2
    text = (tmp_path / "daemon.log").read_text()
    assert "clients.acme.nmae" in text
