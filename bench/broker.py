"""The benchmark's broker work: declare, pre-fill, count and delete, all under one prefix."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aio_pika import Message
from aio_pika.abc import AbstractChannel, AbstractConnection

from daemon.broker.producer import item_message
from daemon.broker.topology import Topology, declare_client_queue, declare_topology

AMQP_URL = os.environ.get("S2SQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ITEM_TYPE = "system.noop"
# Channels used in parallel for declares and deletes (a channel does one RPC at a time).
IO_CHANNELS = 16
PUBLISH_BATCH = 500  # publishes in flight while pre-filling


def client_ids(count: int) -> list[str]:
    return [f"c{i:05d}" for i in range(count)]


def clients_toml(ids: Iterable[str]) -> str:
    """A clients file registering every id with no settings (noop items need none)."""
    return "".join(f"[clients.{c}]\n" for c in ids)


async def on_channels(
    connection: AbstractConnection,
    names: Sequence[str],
    action: Callable[[AbstractChannel, str], Awaitable[Any]],
) -> None:
    """Run `action(channel, name)` for every name, spread over a few channels."""

    async def worker(chunk: Sequence[str]) -> None:
        async with connection.channel(publisher_confirms=False) as channel:
            for name in chunk:
                await action(channel, name)

    await asyncio.gather(*(worker(names[i::IO_CHANNELS]) for i in range(IO_CHANNELS)))


def listed(kind: str, prefix: str) -> set[str]:
    """Names of the broker's queues or exchanges under `prefix`, if rabbitmqctl can tell."""
    if shutil.which("rabbitmqctl") is None:
        return set()
    out = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", "name", "--no-table-headers"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    return {n for n in out.stdout.split() if n.startswith(f"{prefix}.")}


def active_consumers(queue_prefix: str) -> dict[str, str]:
    """{queue: connection name of its single active consumer} for queues named
    `queue_prefix`..., from rabbitmqctl (the management plugin may be off; a
    listing that races a queue's deletion elsewhere on the broker is asked again)."""
    def table(*args: str) -> list[list[str]]:
        out = ""
        for attempt in range(10):
            done = subprocess.run(["rabbitmqctl", "-q", "--no-table-headers", *args],
                                  capture_output=True, text=True, timeout=120, check=False)
            out = done.stdout + done.stderr
            if done.returncode == 0 and "badrpc" not in done.stdout:
                return [line.split("\t") for line in done.stdout.splitlines() if line]
            time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"rabbitmqctl {args[0]} kept failing: {out[-500:]}")

    consumers = table("list_consumers", "queue_name", "channel_pid", "active")
    channels = dict(table("list_channels", "pid", "connection"))
    names = {}
    for pid, properties in table("list_connections", "pid", "client_properties"):
        found = re.search(r'\{"connection_name","([^"]*)"\}', properties)
        names[pid] = found.group(1) if found else ""
    return {queue: names.get(channels.get(channel, ""), "")
            for queue, channel, active in consumers
            if queue.startswith(queue_prefix) and active == "true"}


async def delete_everything(
    connection: AbstractConnection, topo: Topology, ids: list[str], others: Iterable[str] = ()
) -> None:
    """Delete every queue and exchange of the prefix: the known ones and whatever is listed.

    `others`: more names under the prefix, deleted as queues and as exchanges.
    """
    queues = {topo.client_queue(c) for c in ids} | listed("queues", topo.prefix) | set(others)
    queues |= {topo.state, topo.state_snapshot, topo.archive, topo.deadletter, topo.unrouted,
               topo.unrouted_watch, topo.nonblocking, topo.events_log, topo.history}
    exchanges = listed("exchanges", topo.prefix) | set(others) | {
        topo.blocking, topo.unrouted, topo.nonblocking, topo.control, topo.events,
        topo.deadletter,
    }
    await on_channels(connection, sorted(queues), lambda ch, n: ch.queue_delete(n))
    await on_channels(connection, sorted(exchanges), lambda ch, n: ch.exchange_delete(n))


async def declare_everything(
    connection: AbstractConnection, topo: Topology, ids: list[str]
) -> None:
    """The shared topology and every client queue, exactly as the daemon declares them."""
    async with connection.channel() as channel:
        await declare_topology(channel, topo)
    await on_channels(connection, ids, lambda ch, c: declare_client_queue(ch, topo, c))


async def publish_all(
    connection: AbstractConnection, exchange: str, messages: Iterable[tuple[Message, str]]
) -> float:
    """Publish (message, routing key) pairs to `exchange` ("": the default), confirmed.

    Returns the seconds it took; PUBLISH_BATCH publishes are in flight at a time.
    """
    started = time.monotonic()
    async with connection.channel(publisher_confirms=True) as channel:
        target = (channel.default_exchange if exchange == ""
                  else await channel.get_exchange(exchange, ensure=False))
        pending: list[Awaitable[Any]] = []
        for message, routing_key in messages:
            pending.append(target.publish(message, routing_key=routing_key))
            if len(pending) >= PUBLISH_BATCH:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    return time.monotonic() - started


async def prefill(
    connection: AbstractConnection, topo: Topology, ids: list[str], items: int
) -> float:
    """Publish `items` noop items to every client, confirmed; returns the seconds it took.

    Items go round the clients (item 1 to everyone, then item 2, ...) through
    `<prefix>.blocking`, as producers publish them.
    """
    messages = ((item_message(c, ITEM_TYPE, {}), c) for _ in range(items) for c in ids)
    return await publish_all(connection, topo.blocking, messages)


async def prefill_nonblocking(
    connection: AbstractConnection, topo: Topology, ids: list[str], items: int
) -> float:
    """Publish `items` noop items in all, round the clients, to `<prefix>.nonblocking`."""
    messages = ((item_message(ids[i % len(ids)], ITEM_TYPE, {}), ids[i % len(ids)])
                for i in range(items))
    return await publish_all(connection, topo.nonblocking, messages)


def items_left(prefix: str) -> int:
    """Messages (ready and unacked) in the client queues and the non-blocking queue.

    As rabbitmqctl counts them. Quorum queue counts lag by a few seconds (DESIGN.md fact 9).
    """
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages", "--no-table-headers"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    rows = (line.split() for line in out.stdout.splitlines())
    return sum(int(r[1]) for r in rows if len(r) == 2 and (
        r[0].startswith(f"{prefix}.blocking.") or r[0] == f"{prefix}.nonblocking"))
