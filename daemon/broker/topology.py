"""Every broker name and argument, derived from the prefix, and their declaration.

Names and arguments are pure (tested without a broker); `declare_*` do the I/O.
All declarations are idempotent: every daemon declares the whole topology at
start-up, and a client queue whenever its client is registered.

| name                         | what                                                    |
| ---------------------------- | ------------------------------------------------------- |
| `<p>.blocking`               | direct exchange, alternate exchange `<p>.unrouted`      |
| `<p>.blocking.<client>`      | one queue per client, single active consumer            |
| `<p>.unrouted`               | fanout exchange + queue: blocking items for unknown ids |
| `<p>.unrouted.lock`          | exclusive queue, while one replica browses unrouted     |
| `<p>.unrouted.watch`         | queue, single active consumer: a copy of each unrouted  |
|                              | item, to announce it (`item.unrouted`), then dropped    |
| `<p>.nonblocking`            | topic exchange bound `#` to the queue of the same name  |
| `<p>.nonblocking.delay.<N>ms`| one per retry delay: TTL N ms, dead-letters to the above |
| `<p>.control`                | fanout exchange for control messages                    |
| `<p>.events`                 | topic exchange for lifecycle events                     |
| `<p>.events.log`             | stream bound `#` to it: the events, replayable (SSE ids) |
| `<p>.state`                  | stream: the state log (docs/parking.md)                 |
| `<p>.state.snapshot`         | queue of one: where the latest snapshot starts          |
| `<p>.history`                | stream: what ran, per client (daemon/core/history.py)   |
| `<p>.archive`                | queue: skipped items, with who skipped them and why     |
| `<p>.deadletter`             | fanout exchange + queue: items over the delivery limit  |
| `<p>.leader`                 | queue, single active consumer: elects the replica that  |
|                              | answers control messages no single replica owns         |
| `<p>.replicas`               | fanout exchange: every replica's beat (daemon/broker/replicas) |
| `<p>.replicas.<replica>`     | exclusive queue: where one replica hears the beats      |
| `<p>.notify`                 | queue, single active consumer: notifications to decide  |
|                              | (park, failure, resume, digest due)                     |
| `<p>.notify.delay.<N>ms`     | the digest window: TTL N ms, dead-letters to the above  |
| `<p>.notify.send`            | queue, competing consumers: mails and webhooks to send  |
| `<p>.notify.send.delay.<N>ms`| one per delivery retry delay, dead-letters to the above |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue

log = structlog.get_logger()

QueueType = Literal["quorum", "classic"]


@dataclass(frozen=True, slots=True)
class Topology:
    """Names of one deployment's exchanges and queues."""

    prefix: str
    queue_type: QueueType = "quorum"
    delivery_limit: int = 1000
    state_retention_s: float = 7 * 86_400
    state_segment_bytes: int = 8_000_000
    quorum_initial_group_size: int | None = None
    events_log_retention_s: float = 3_600
    events_log_max_bytes: int = 100_000_000
    history_max_age_s: float = 7 * 86_400
    history_max_bytes: int = 1_000_000_000

    def queue_type_arguments(self) -> dict[str, Any]:
        """`x-queue-type`, and on quorum queues the replica count when one is set.

        `x-quorum-initial-group-size` only applies when a queue is created, yet
        RabbitMQ checks it on every declaration: a queue made with another
        value (or none) refuses the declaration with PRECONDITION_FAILED.
        """
        args: dict[str, Any] = {"x-queue-type": self.queue_type}
        if self.queue_type == "quorum" and self.quorum_initial_group_size is not None:
            args["x-quorum-initial-group-size"] = self.quorum_initial_group_size
        return args

    @property
    def blocking(self) -> str:
        return f"{self.prefix}.blocking"

    @property
    def unrouted(self) -> str:
        return f"{self.prefix}.unrouted"

    @property
    def nonblocking(self) -> str:
        return f"{self.prefix}.nonblocking"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def events_log(self) -> str:
        return f"{self.prefix}.events.log"

    def events_log_arguments(self) -> dict[str, Any]:
        """A stream of every event, kept by age and by size, whichever comes first.

        The broker drops a stream's data a whole segment at a time, and only
        segments that are full: with its default segment of 500 MB a 100 MB
        limit would keep everything up to 500 MB. Segments are a tenth of the
        limit (1 MB to 50 MB, never more than the limit), so the log stays
        within about one segment over it.
        """
        return {"x-queue-type": "stream", "x-max-age": max_age(self.events_log_retention_s),
                "x-max-length-bytes": self.events_log_max_bytes,
                "x-stream-max-segment-size-bytes": events_log_segment(self.events_log_max_bytes)}

    @property
    def state(self) -> str:
        return f"{self.prefix}.state"

    @property
    def archive(self) -> str:
        return f"{self.prefix}.archive"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    def delay_queue(self, seconds: float, target: str | None = None) -> str:
        """Where a message waits `seconds` before it goes to `target` (default: non-blocking)."""
        return f"{target or self.nonblocking}.delay.{round(seconds * 1000)}ms"

    def delay_queue_arguments(self, seconds: float, target: str | None = None) -> dict[str, Any]:
        """A queue-wide TTL that dead-letters to `target` (default: the non-blocking queue).

        Queue-wide, not per message: per-message TTL only expires at the head,
        so one long delay would hold up shorter ones behind it; one queue per
        delay keeps every queue in expiry order. Items are republished (never
        dead-lettered) from the work queue into a delay queue, so no message
        ever carries a dead-letter cycle that quorum queues would drop
        (celery #9867). Quorum delay queues dead-letter at-least-once.
        """
        args: dict[str, Any] = {
            **self.queue_type_arguments(),
            "x-message-ttl": round(seconds * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": target or self.nonblocking,
        }
        if self.queue_type == "quorum":
            args |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        return args

    @property
    def leader(self) -> str:
        return f"{self.prefix}.leader"

    def leader_queue_arguments(self) -> dict[str, Any]:
        """Single active consumer elects the leader; heartbeats never pile up."""
        return {**self.queue_type_arguments(), "x-single-active-consumer": True,
                "x-max-length": 100, "x-overflow": "drop-head"}

    @property
    def replicas(self) -> str:
        return f"{self.prefix}.replicas"

    @property
    def notify(self) -> str:
        return f"{self.prefix}.notify"

    @property
    def notify_send(self) -> str:
        return f"{self.prefix}.notify.send"

    def notify_queue_arguments(self) -> dict[str, Any]:
        """Single active consumer: one replica at a time decides (quiet periods, digests)."""
        return {**self.queue_type_arguments(), "x-single-active-consumer": True}

    def client_queue(self, client_id: str) -> str:
        """The blocking queue of one client."""
        return f"{self.blocking}.{client_id}"

    def client_queue_arguments(self) -> dict[str, Any]:
        """Arguments of every client queue.

        Single active consumer keeps one consumer per client across replicas.
        On quorum queues the delivery limit is set on purpose: 3.10 has none (a
        message that crashes the daemon would loop forever), 4.x defaults to 20
        and drops the message at the limit, and 4.x returns requeued messages to
        the *back* of a queue without a limit, which would break FIFO. Crashes,
        timeouts and graceful hand-backs all count, so the limit is high and the
        item goes to `<p>.deadletter` rather than being dropped.

        Classic queues have no delivery limit. They suffer rabbitmq-server
        #5460 (a cancelled single-active consumer that held a delivery starves
        its successor): the consumers never cancel while holding, they hand a
        queue over only by closing the channel.
        """
        args: dict[str, Any] = {"x-single-active-consumer": True, **self.queue_type_arguments()}
        if self.queue_type == "quorum":
            args |= {
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.deadletter,
            }
        return args

    def shared_queue_arguments(self) -> dict[str, Any]:
        """Arguments of the durable shared queues (non-blocking, dead-letter, archive)."""
        return self.queue_type_arguments()

    @staticmethod
    def unrouted_queue_arguments() -> dict[str, Any]:
        """The unrouted queue is classic on purpose.

        Listing and replaying browse it with unacked gets and hand the rest back;
        a classic queue puts returned messages back at their original positions,
        so the original order survives any number of listings.
        """
        return {"x-queue-type": "classic"}

    @property
    def unrouted_watch(self) -> str:
        return f"{self.unrouted}.watch"

    @staticmethod
    def unrouted_watch_arguments() -> dict[str, Any]:
        """Copies to announce, one replica at a time; bounded, since a copy is only news.

        With no daemon running for long, the oldest copies go first: the items
        themselves stay in the unrouted queue whatever happens here.
        """
        return {"x-queue-type": "classic", "x-single-active-consumer": True,
                "x-max-length": 10_000, "x-overflow": "drop-head"}

    @property
    def state_snapshot(self) -> str:
        return f"{self.state}.snapshot"

    def state_stream_arguments(self) -> dict[str, Any]:
        """The state log is a stream: read non-destructively by every replica.

        Retention is by age (a week by default), in segments of 8 MB: the broker
        deletes a whole segment once its newest record is older than the age.
        That is safe because a snapshot of the whole view, with every failed
        item's record it needs, is written far more often (docs/parking.md).
        """
        return {"x-queue-type": "stream", "x-max-age": max_age(self.state_retention_s),
                "x-stream-max-segment-size-bytes": self.state_segment_bytes}

    @property
    def history(self) -> str:
        return f"{self.prefix}.history"

    def history_stream_arguments(self) -> dict[str, Any]:
        """What ran is an announcement: kept by age and by size, whichever ends first.

        Retention drops whole segments, so they are small (16 MB) next to the size cap.
        """
        return {"x-queue-type": "stream", "x-max-age": max_age(self.history_max_age_s),
                "x-max-length-bytes": self.history_max_bytes,
                "x-stream-max-segment-size-bytes": min(16_000_000, self.history_max_bytes)}

    def snapshot_queue_arguments(self) -> dict[str, Any]:
        """One message: the latest snapshot; a new one pushes the old out."""
        return {**self.queue_type_arguments(), "x-max-length": 1, "x-overflow": "drop-head"}


def max_age(seconds: float) -> str:
    """A retention age as RabbitMQ's `x-max-age` writes it: `7D`, `12h`, `90s` (pure)."""
    whole = max(1, round(seconds))
    for unit, size in (("D", 86_400), ("h", 3_600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def events_log_segment(max_bytes: int) -> int:
    """The segment size of the events log: a tenth of its size limit, 1 MB to 50 MB (pure)."""
    return min(max_bytes, max(1_000_000, min(50_000_000, max_bytes // 10)))


async def declare_topology(channel: AbstractChannel, topo: Topology) -> None:
    """Declare every shared exchange and queue (not the client queues, not the state log).

    The state log is declared by `daemon.core.state.declare_state_stream`, which
    copes with a stream declared before with other retention arguments.
    """
    ex = aio_pika.ExchangeType
    unrouted_x = await channel.declare_exchange(topo.unrouted, ex.FANOUT, durable=True)
    unrouted_q = await channel.declare_queue(
        topo.unrouted, durable=True, arguments=topo.unrouted_queue_arguments()
    )
    await unrouted_q.bind(unrouted_x)
    watch_q = await channel.declare_queue(
        topo.unrouted_watch, durable=True, arguments=topo.unrouted_watch_arguments()
    )
    await watch_q.bind(unrouted_x)
    await channel.declare_exchange(
        topo.blocking, ex.DIRECT, durable=True, arguments={"alternate-exchange": topo.unrouted}
    )
    nb_x = await channel.declare_exchange(topo.nonblocking, ex.TOPIC, durable=True)
    nb_q = await channel.declare_queue(
        topo.nonblocking, durable=True, arguments=topo.shared_queue_arguments()
    )
    await nb_q.bind(nb_x, routing_key="#")
    await channel.declare_exchange(topo.control, ex.FANOUT, durable=True)
    await channel.declare_exchange(topo.events, ex.TOPIC, durable=True)
    dl_x = await channel.declare_exchange(topo.deadletter, ex.FANOUT, durable=True)
    dl_q = await channel.declare_queue(
        topo.deadletter, durable=True, arguments=topo.shared_queue_arguments()
    )
    await dl_q.bind(dl_x)
    await channel.declare_queue(
        topo.archive, durable=True, arguments=topo.shared_queue_arguments()
    )


async def declare_stream(connection: AbstractConnection, name: str, arguments: dict[str, Any],
                         differ: str) -> None:
    """Declare the stream `name`; keep an existing one whose retention arguments differ.

    A stream's arguments are fixed when it is made (a policy changes them later),
    and a declaration with other ones fails its channel with PRECONDITION_FAILED:
    so it is tried on a channel of its own, and `differ` is logged instead.
    """
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        log.warning(differ, stream=name, wanted=arguments, error=str(exc))
    finally:
        if not channel.is_closed:
            await channel.close()


async def declare_events_log(connection: AbstractConnection, topo: Topology) -> None:
    """Declare the events log and bind it to the events exchange (after `declare_topology`)."""
    await declare_stream(connection, topo.events_log, topo.events_log_arguments(),
                         "events.log_arguments_differ")
    channel = await connection.channel(publisher_confirms=False)
    try:
        queue = await channel.get_queue(topo.events_log, ensure=False)
        await queue.bind(topo.events, routing_key="#")
    finally:
        await channel.close()


async def declare_history_stream(connection: AbstractConnection, topo: Topology) -> None:
    """Declare `<p>.history` (what ran, daemon/core/history.py)."""
    await declare_stream(connection, topo.history, topo.history_stream_arguments(),
                         "history.stream_arguments_differ")


async def declare_delay_queues(
    channel: AbstractChannel, topo: Topology, delays: tuple[float, ...]
) -> None:
    """One delay queue per distinct retry delay of the non-blocking queue."""
    for seconds in sorted(set(delays)):
        await channel.declare_queue(
            topo.delay_queue(seconds), durable=True,
            arguments=topo.delay_queue_arguments(seconds),
        )


async def declare_notify_queues(
    channel: AbstractChannel, topo: Topology, retry_delays: tuple[float, ...], window: float
) -> None:
    """The notification queues, the digest window's delay queue and the delivery retry queues."""
    await channel.declare_queue(topo.notify, durable=True,
                                arguments=topo.notify_queue_arguments())
    await channel.declare_queue(topo.notify_send, durable=True,
                                arguments=topo.shared_queue_arguments())
    await channel.declare_queue(topo.delay_queue(window, topo.notify), durable=True,
                                arguments=topo.delay_queue_arguments(window, topo.notify))
    for seconds in sorted(set(retry_delays)):
        await channel.declare_queue(
            topo.delay_queue(seconds, topo.notify_send), durable=True,
            arguments=topo.delay_queue_arguments(seconds, topo.notify_send),
        )


async def declare_client_queue(
    channel: AbstractChannel, topo: Topology, client_id: str
) -> AbstractQueue:
    """Declare one client's queue and bind it to the blocking exchange."""
    queue = await channel.declare_queue(
        topo.client_queue(client_id), durable=True, arguments=topo.client_queue_arguments()
    )
    await queue.bind(topo.blocking, routing_key=client_id)
    return queue
