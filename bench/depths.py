"""How long reading every client queue's depth takes, one channel against several.

    python bench/depths.py --queues 2000 [--queue-type classic] [--prefix s2sbenchd]

Declares the queues (not timed), then times `daemon.broker.depths.queue_depths` over
all of them with 1, 2, 4 and 8 channels (best of 3), and deletes them again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import aio_pika

from daemon.broker.depths import queue_depths

AMQP_URL = os.environ.get("S2SQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def run(prefix: str, count: int, queue_type: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    names = [f"{prefix}.blocking.c{n}" for n in range(count)]
    async with connection, connection.channel() as channel:
        try:
            for name in names:
                await channel.declare_queue(name, durable=True,
                                            arguments={"x-queue-type": queue_type})
            for channels in (1, 2, 4, 8):
                took = []
                for _ in range(3):
                    started = time.perf_counter()
                    depths = await queue_depths(connection, names, channels)
                    took.append(time.perf_counter() - started)
                    assert len(depths) == count
                seconds = min(took)
                print(f"{channels} channel(s): {seconds:.3f} s for {count} {queue_type} queues,"
                      f" {seconds / count * 1e6:.0f} µs a queue")
        finally:
            for name in names:  # a restarted broker leaves them: rerun with the same prefix
                await channel.queue_delete(name)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queues", type=int, default=2000)
    parser.add_argument("--queue-type", choices=["classic", "quorum"], default="classic")
    parser.add_argument("--prefix", default="s2sbenchd")
    args = parser.parse_args()
    asyncio.run(run(args.prefix, args.queues, args.queue_type))


if __name__ == "__main__":
    main()
