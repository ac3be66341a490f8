"""The baseline, run as a child of the benchmarks: plain aio-pika consumers that only ack.

    python bench/raw.py --prefix s2sbench --queue-type quorum --clients 1000
    python bench/raw.py --prefix s2sbenchnb --queue-type quorum --shared --prefetch 32

Blocking (bench/blocking.py): one consumer per client queue, 100 per channel,
prefetch 1 per consumer. `--shared` (bench/nonblocking.py): one consumer on
`<prefix>.nonblocking` with prefetch `--prefetch`. Either way a callback that
only acks: the least a consumer must do. Protocol:
the number of items to expect comes on stdin; `{"ready": true}` goes to
stdout once every consumer is attached, then `{"acked": N, "last": T}` when
the N-th ack is sent, T in `time.monotonic()` (one clock for every process
on Linux). The process exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage

from daemon.broker.topology import Topology

CONSUMERS_PER_CHANNEL = 100  # as the daemon's default S2SQ_CONSUMERS_PER_CHANNEL
AMQP_URL = os.environ.get("S2SQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def say(**fields: object) -> None:
    print(orjson.dumps(fields).decode(), flush=True)


async def consume_all(args: argparse.Namespace) -> None:
    topo = Topology(args.prefix, "quorum" if args.queue_type == "quorum" else "classic")
    expected = int(await asyncio.to_thread(sys.stdin.readline))
    acked = 0
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def on_message(message: AbstractIncomingMessage) -> None:
        nonlocal acked
        await message.ack()
        acked += 1
        if acked == expected:
            done.set_result(time.monotonic())

    connection = await aio_pika.connect(
        AMQP_URL, client_properties={"connection_name": "bench raw"}
    )
    async with connection:
        if args.shared:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=args.prefetch)
            queue = await channel.get_queue(topo.nonblocking, ensure=False)
            await queue.consume(on_message)
        else:
            await consume_client_queues(connection, topo, args.clients, on_message)
        say(ready=True)
        last = await done
        say(acked=acked, last=last)
        await asyncio.to_thread(sys.stdin.read)


async def consume_client_queues(
    connection: aio_pika.abc.AbstractConnection, topo: Topology, clients: int,
    on_message: Callable[[AbstractIncomingMessage], Awaitable[None]],
) -> None:
    ids = [f"c{i:05d}" for i in range(clients)]  # as bench.broker.client_ids
    for start in range(0, clients, CONSUMERS_PER_CHANNEL):
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=1)
        for client in ids[start : start + CONSUMERS_PER_CHANNEL]:
            queue = await channel.get_queue(topo.client_queue(client), ensure=False)
            await queue.consume(on_message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], required=True)
    parser.add_argument("--clients", type=int, default=0, help="client queues to consume")
    parser.add_argument("--shared", action="store_true",
                        help="consume <prefix>.nonblocking instead of the client queues")
    parser.add_argument("--prefetch", type=int, default=1, help="with --shared")
    args = parser.parse_args()
    asyncio.run(consume_all(args))


if __name__ == "__main__":
    main()
