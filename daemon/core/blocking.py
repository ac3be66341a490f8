"""One client's blocking queue: the consumer's flow control (SPEC section 4).

The consumer declares the client's queue, consumes it with prefetch 1 on a
channel the pool (`daemon.broker.channels`) gives it, and hands every delivery to
the client's `Parking` (`daemon.core.parking`), which decides its fate. It never
cancels its consumer while holding a delivery (DESIGN.md fact 1: on a
single-active-consumer queue that breaks order, or hangs a classic queue):
a queue is handed back only by closing the channel, which requeues the held
item at the head; the pool then calls `channel_lost`, which cancels a run on
the lost delivery.
"""

from __future__ import annotations

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractChannel

from common.clock import utcnow
from daemon.broker.delivery import AmqpDelivery
from daemon.broker.topology import declare_client_queue
from daemon.core.items import BadItem, Parsed, parse_item
from daemon.core.outcomes import Outcomes
from daemon.core.parking import Delivery, OperationError, Parking, UnknownClient, Work
from daemon.core.records import Parked
from daemon.core.runtime import Runtime, backoff, call_handler

__all__ = ["BlockingConsumer", "OperationError", "UnknownClient"]


class BlockingConsumer:
    """Consumes one client's queue and hands each delivery to its parking."""

    def __init__(self, client_id: str, rt: Runtime, outcomes: Outcomes) -> None:
        self.client_id = client_id
        self._rt = rt
        self.parking = Parking(client_id, rt.state, self._work(), outcomes)

    def __repr__(self) -> str:
        return f"<BlockingConsumer {self.client_id} {self.parking.state}>"

    def _work(self) -> Work:
        rt = self._rt
        settings = rt.settings

        async def attempt(parsed: Parsed, n: int) -> None:
            await call_handler(parsed, n, rt.context, settings.handler_timeout, rt.metrics)

        return Work(
            parse=self._parse, attempt=attempt, attempts=settings.blocking_attempts,
            backoff=lambda n: backoff(n, settings.blocking_backoff, settings.blocking_backoff_max),
            archive=self._archive, gone_error=self._gone_error,
        )

    # -- what the pool and the operations use ------------------------------------------

    @property
    def parked(self) -> Parked | None:
        """The park of the item held here, if this replica holds the client's parked item."""
        return self.parking.parked

    @property
    def state(self) -> str:
        return self.parking.state

    @property
    def paused(self) -> bool:
        return self.parking.paused

    @property
    def busy(self) -> bool:
        return self.parking.busy

    async def start(self, channel: AbstractChannel) -> None:
        """Declare the queue on `channel` and consume it (prefetch 1 is set on the channel)."""
        queue = await declare_client_queue(channel, self._rt.topo, self.client_id)
        underlay = await channel.get_underlay_channel()
        await underlay.basic_consume(queue.name, self._on_delivery)

    async def _on_delivery(self, message: aiormq.abc.DeliveredMessage) -> None:
        await self.parking.take(AmqpDelivery(message))

    def channel_lost(self) -> None:
        self.parking.channel_lost()

    def begin_stop(self) -> None:
        self.parking.begin_stop()

    @property
    def holds_park(self) -> bool:
        return self.parking.holds_park

    def hold(self) -> None:
        self.parking.hold()

    def unhold(self) -> None:
        self.parking.unhold()

    async def wait_idle(self) -> None:
        await self.parking.wait_idle()

    def cancel_running(self) -> None:
        self.parking.cancel_running()

    # -- the parts of an item's run that need the broker ----------------------------------

    def _parse(self, message: Delivery) -> Parsed | BadItem:
        rt = self._rt
        return parse_item(
            body=message.body, content_type=message.content_type,
            message_id=message.message_id, type_=message.type, headers=message.headers,
            client_id=self.client_id, queue="blocking", handlers=rt.handlers,
            max_body_bytes=rt.settings.max_body_bytes,
        )

    async def _archive(self, message: Delivery, park: Parked, actor: str,
                       reason: str | None) -> None:
        """Keep a skipped item in `<prefix>.archive` with who skipped it and why."""
        headers = dict(message.headers or {})
        headers.update({
            "x-s2s-skipped-by": actor, "x-s2s-skip-reason": reason or "",
            "x-s2s-skipped-at": utcnow(), "x-s2s-error": park.error,
            "x-s2s-queue": "blocking",
        })
        await self._rt.publish_confirmed(
            aio_pika.Message(
                message.body, headers=headers, content_type=message.content_type,
                message_id=message.message_id, type=message.type, timestamp=message.timestamp,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self._rt.topo.archive,
        )

    def _gone_error(self, message_id: str | None, error: str) -> str:
        topo = self._rt.topo
        why = f" It had failed with: {error}" if error else " It had not finished."
        return (
            f"the item {message_id!r} is no longer at the head of its queue: the broker"
            f" dead-lettered it after {topo.delivery_limit} deliveries (the queue's"
            f" x-delivery-limit), or the queue was purged; dead-lettered items are kept in"
            f" {topo.deadletter!r}. Skip it to let the client go on.{why}"
        )
