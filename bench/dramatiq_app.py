"""The Dramatiq side of bench/nonblocking.py: a RabbitMQ broker and one noop actor.

    S2SQ_BENCH_PREFIX=s2sbenchnb dramatiq bench.dramatiq_app --processes 2 --threads 8

Started by the benchmark with the environment below; Dramatiq's default
middleware, acks after the actor ran, prefetch 2 x threads per process. The
actor's queue is `<prefix>.dramatiq` (with Dramatiq's `.DQ` delay and `.XQ`
dead-letter queues). Dramatiq declares classic queues only; to compare like
with like the broker below adds `x-queue-type` (quorum by default, as the
daemon's) to the arguments Dramatiq builds for the queue and its delay queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aio_pika
import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench import tasks
from bench.tasks import AMQP_URL, QUEUE_TYPE, count_one

QUEUE = tasks.queue_name("dramatiq")
ACTOR = "noop"


class Broker(RabbitmqBroker):  # type: ignore[misc]
    """Dramatiq's RabbitMQ broker, declaring its queues as `S2SQ_BENCH_QUEUE_TYPE`."""

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)
        return arguments | {"x-queue-type": QUEUE_TYPE}


dramatiq.set_broker(Broker(url=AMQP_URL))


@dramatiq.actor(queue_name=QUEUE, actor_name=ACTOR)  # type: ignore[untyped-decorator]
def noop() -> None:
    count_one()


def task_messages(count: int, queue: str) -> Iterator[tuple[aio_pika.Message, str]]:
    """`count` noop messages for `queue` as `noop.send()` publishes them (a confirmed pre-fill).

    Dramatiq's own encoding of its `Message`, persistent, to the default
    exchange with the queue's name as routing key.
    """
    for _ in range(count):
        message = dramatiq.Message(queue_name=queue, actor_name=ACTOR, args=(), kwargs={},
                                   options={})
        yield aio_pika.Message(message.encode(),
                               delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue
