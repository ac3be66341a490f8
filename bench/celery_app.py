"""The Celery side of bench/nonblocking.py: an app with one noop task on one queue.

    S2SQ_BENCH_PREFIX=s2sbenchnb celery -A bench.celery_app worker --pool prefork --concurrency 2

Started by the benchmark with the environment below. The task acks late (after
it ran, as the daemon does), results are ignored (no backend), remote control,
gossip, mingle and heartbeats are off, so the worker's only broker work is its
task queue `<prefix>.celery` (quorum or classic, as the daemon's queues).
Prefetch is `S2SQ_BENCH_CELERY_MULTIPLIER` x concurrency (the benchmark makes
it the daemon's 32).

On quorum queues Celery (5.5+) also declares 28 queues and exchanges named
`celery_delayed_*` for native delayed delivery (countdown/ETA tasks). They
are not under the prefix and this benchmark sends no delayed task, so the
consumer here leaves that start-up step out; nothing per task changes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import ClassVar

import aio_pika
from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Exchange, Queue
from kombu.serialization import dumps

from bench.tasks import AMQP_URL, QUEUE_TYPE, count_one, queue_name

QUEUE = queue_name("celery")
TASK = "bench.noop"


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's worker consumer without the `celery_delayed_*` topology (see above)."""

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        default_steps: ClassVar[list[str]] = [
            s for s in CeleryConsumer.Blueprint.default_steps if not s.endswith(":DelayedDelivery")
        ]


app = Celery("bench", broker=AMQP_URL)
app.conf.update(
    task_queues=[Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE,
                       queue_arguments={"x-queue-type": QUEUE_TYPE})],
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_acks_late=True,
    task_ignore_result=True,
    result_backend=None,
    worker_prefetch_multiplier=int(os.environ.get("S2SQ_BENCH_CELERY_MULTIPLIER", "16")),
    worker_enable_remote_control=False,
    worker_consumer=f"{__name__}:Consumer",
    broker_connection_retry_on_startup=True,
)


@app.task(name=TASK, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    count_one()


def task_messages(count: int, queue: str) -> Iterator[tuple[aio_pika.Message, str]]:
    """`count` noop tasks for `queue` as `noop.apply_async()` sends them (a confirmed pre-fill).

    Celery's own message (protocol 2: headers, body, correlation id) from
    `app.amqp.as_task_v2`, JSON as the default serializer, persistent; the
    same as a message `apply_async` publishes but for `reply_to` (no results).
    """
    for _ in range(count):
        task_id = str(uuid.uuid4())
        headers, properties, body, _ = app.amqp.as_task_v2(
            task_id, TASK, args=(), kwargs={}, ignore_result=True,
        )
        content_type, encoding, data = dumps(body, serializer="json")
        message = aio_pika.Message(
            data.encode() if isinstance(data, str) else data, headers=headers,
            content_type=content_type, content_encoding=encoding,
            correlation_id=properties["correlation_id"], priority=0,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        yield message, queue
