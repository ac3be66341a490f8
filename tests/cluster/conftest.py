"""The three-node cluster of `scripts/rabbitmq-cluster.sh`, and the test's side of it.

These tests carry the `cluster` marker and are not part of `make test`
(pyproject's addopts deselect them): `make cluster-test` starts the cluster,
runs them and removes it.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from daemon.broker.brokers import FailoverConnection, connect_robust, where
from daemon.broker.topology import Topology
from tests.support import ROOT, Broker, FakeShop, purge, serve

SCRIPT = ROOT / "scripts" / "rabbitmq-cluster.sh"
GROUP_SIZE = 3


def _script(*args: str, timeout: float = 300) -> str:
    done = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"rabbitmq-cluster.sh {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


@dataclass
class Cluster:
    """The three nodes: their URLs, and hands to stop, start and kill them."""

    urls: list[str]
    log: list[str] = field(default_factory=list)  # what the test did, with times

    def node_of(self, address: str) -> int:
        """The node number (1-3) of a host:port."""
        return [where(u) for u in self.urls].index(address) + 1

    def name(self, n: int) -> str:
        return f"s2s-cluster-{n}@localhost"

    async def _run(self, *args: str) -> None:
        started = time.monotonic()
        await asyncio.to_thread(_script, *args)
        self.log.append(f"{' '.join(args)}: {time.monotonic() - started:.1f} s")

    async def up(self) -> None:
        await self._run("up")

    async def kill(self, n: int) -> None:
        await self._run("kill", str(n))

    async def stop(self, n: int) -> None:
        await self._run("stop", str(n))

    async def start(self, n: int) -> None:
        await self._run("start", str(n))

    async def ctl(self, n: int, *args: str, tool: str = "rabbitmqctl") -> str:
        """Run a RabbitMQ CLI tool against node n; its stdout."""
        def run() -> str:
            done = subprocess.run([tool, "-q", "-n", self.name(n), *args], capture_output=True,
                                  text=True, timeout=180, check=False)
            if done.returncode != 0:
                raise AssertionError(f"{tool} {' '.join(args)} on node {n}: {done.stderr}")
            return done.stdout
        return await asyncio.to_thread(run)

    async def leaders(self, n: int, prefix: str) -> Counter[int]:
        """How many of the prefix's client queues each node leads (asked of node n)."""
        out = await self.ctl(n, "list_queues", "name", "leader", "--no-table-headers")
        names = {self.name(m): m for m in (1, 2, 3)}
        return Counter(names[leader] for name, leader in
                       (line.split("\t") for line in out.splitlines() if "\t" in line)
                       if name.startswith(f"{prefix}.blocking."))

    async def quorum_plus_one(self, n: int) -> None:
        """Wait until stopping node n keeps every quorum queue available (rolling restarts)."""
        await self.ctl(n, "await_online_quorum_plus_one", "-t", "120", tool="rabbitmq-upgrade")


@pytest.fixture(scope="session")
def cluster_urls() -> list[str]:
    """Start the cluster (idempotent: a running one is only checked)."""
    return _script("up").split()


@pytest.fixture
async def cluster(cluster_urls: list[str]) -> Cluster:
    """The cluster with all three nodes running (a node an earlier test killed comes back)."""
    c = Cluster(cluster_urls)
    await c.up()
    return c


@asynccontextmanager
async def cluster_broker(prefix: str, cluster: Cluster) -> AsyncIterator[Broker]:
    """The test's own failover connection to the cluster; purges the prefix afterwards.

    Its topology has the daemon's group size (3): a queue declared first without it
    would refuse the daemon's declaration (docs/cluster.md).
    """
    topo = Topology(prefix, quorum_initial_group_size=GROUP_SIZE)
    connection: FailoverConnection = await connect_robust(cluster.urls, f"test {prefix}",
                                                          timeout=10)
    b = Broker(connection, topo)
    try:
        await b.declare_and_tap(f"{prefix}.test-tap")  # named: declared again on the next node
        yield b
    finally:
        await cluster.up()  # a node the test stopped or killed comes back first
        await purge(connection, topo)
        await connection.close()


@pytest.fixture
async def camqp(prefix: str, cluster: Cluster) -> AsyncIterator[Broker]:
    async with cluster_broker(prefix, cluster) as b:
        yield b


@dataclass
class CountingShop(FakeShop):
    """A fake shop that also keeps the requests it answered to a client still there.

    A request whose client hung up (the daemon's run was cancelled when its
    channel died) is not a delivery: the item runs again, as SPEC §4 allows.
    """

    completed: list[tuple[str, str]] = field(default_factory=list)  # (client, sku)

    async def handle(self, request: web.Request) -> web.Response:
        response = await super().handle(request)
        transport = request.transport
        if transport is not None and not transport.is_closing():
            self.completed.append((request.headers.get("X-S2S-Client", ""),
                                   request.match_info.get("sku", "")))
        return response

    def done(self, client: str) -> list[str]:
        return [sku for c, sku in self.completed if c == client]


@pytest.fixture
async def cshop() -> AsyncIterator[CountingShop]:
    shop = CountingShop()
    app = web.Application()
    app.router.add_route("*", "/{client}/products/{sku}", shop.handle)
    async with serve(app) as shop.url:
        yield shop

