"""Streams on the three-node cluster: a consumer opened right after the declaration.

The daemon declares its streams (state log, events log, history) at start-up and
consumes them at once. On a cluster the declaring node answers before every
node's replica runs, and a consume on a node whose replica is not up yet is
refused (`PRECONDITION_FAILED - … does not have a replica on the local node`):
stop 22's CI saw a daemon exit on it. `StreamTail.open` tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aio_pika
import aiormq.abc
import pytest
from aio_pika.abc import AbstractRobustConnection
from structlog.testing import capture_logs

from daemon.broker.tail import StreamTail
from tests.cluster.conftest import Cluster
from tests.support import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROUNDS = 30


@pytest.fixture
async def nodes(cluster: Cluster) -> AsyncIterator[list[AbstractRobustConnection]]:
    """A connection to each node (1, 2, 3)."""
    async with AsyncExitStack() as stack:
        connections: list[AbstractRobustConnection] = []
        for url in cluster.urls:
            connection = await aio_pika.connect_robust(url)
            stack.push_async_callback(connection.close)
            connections.append(connection)
        yield connections


async def test_a_stream_is_consumed_on_every_node_right_after_its_declaration(
    prefix: str, nodes: list[AbstractRobustConnection],
):
    """Each round one node declares a new stream and publishes a record to it; at once every
    node's tail opens on it and reads the record (none gives up on a refused first consume)."""
    got: dict[tuple[int, int], list[bytes]] = {}
    names = [f"{prefix}.stream-{n}" for n in range(ROUNDS)]
    try:
        with capture_logs() as logs:
            for n, name in enumerate(names):
                declaring = nodes[n % 3]
                async with declaring.channel() as channel:
                    await channel.declare_queue(name, durable=True,
                                                arguments={"x-queue-type": "stream"})
                    await channel.default_exchange.publish(aio_pika.Message(name.encode()),
                                                           routing_key=name)
                tails = [_tail(node, name, got.setdefault((n, i), []))
                         for i, node in enumerate(nodes)]
                try:
                    await asyncio.gather(*(tail.open() for tail in tails))
                    await wait_until(lambda n=n, name=name: all(  # type: ignore[misc]
                        got[n, i] == [name.encode()] for i in range(3)), 30,
                        f"every node to read round {n}'s record")
                finally:
                    for tail in tails:
                        await tail.close()
        refused = [e["error"] for e in logs if e["event"] == "cluster.tail_not_started"]
        print(f"\nfirst consumes refused and tried again: {len(refused)} of {ROUNDS * 3}"
              f" {sorted(set(refused))[:3]}")
    finally:
        async with nodes[0].channel() as channel:
            for name in names:
                await channel.queue_delete(name)


def _tail(connection: AbstractRobustConnection, queue: str, into: list[bytes]) -> StreamTail:
    async def keep(message: aiormq.abc.DeliveredMessage) -> None:
        into.append(message.body)
        await message.channel.basic_ack(message.delivery_tag or 0)

    return StreamTail(connection, queue, keep, lambda: "first", prefetch=10, name="cluster")
