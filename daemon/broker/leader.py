"""Which replica answers the control messages that no single replica owns.

Every replica receives every control message (SPEC section 5). The replica
holding a parked item answers `retry` and `skip` for it; everything else
(status, pause, register, "not parked" …) is answered by one replica, the
leader, so each question gets one answer.

Leadership is broker-native: `<prefix>.leader` is a queue with a single
active consumer. Every replica consumes it and publishes a heartbeat to it
every second; only the active consumer receives them, so a replica that
received one within `LEASE` seconds leads. When it dies the broker makes
another consumer active and the heartbeats flow there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from daemon.broker.topology import Topology
from daemon.tasks import cancel_and_wait

log = structlog.get_logger()

BEAT = 1.0
LEASE = 3.0


class Leadership:
    """Knows whether this replica is the leader right now."""

    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._topo = topo
        self._channel: AbstractChannel | None = None
        self._last_beat = -LEASE
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._was_leader = False

    @property
    def is_leader(self) -> bool:
        leader = time.monotonic() - self._last_beat < LEASE
        if leader != self._was_leader:
            self._was_leader = leader
            log.info("leader.changed", leader=leader)
        return leader

    async def start(self) -> None:
        """Join the election; return once this replica knows whether it leads (≤ LEASE s)."""
        for attempt in range(10):
            try:
                await asyncio.wait_for(self._connection.connected.wait(), 60)
                await self._join()
                break
            except Exception:
                # RabbitMQ 3.10 can fail a consume right after a quorum queue's
                # declaration (noproc, INTERNAL_ERROR closing the connection; aiormq
                # then raises a plain RuntimeError); the robust link comes back.
                if attempt == 9:
                    raise
                log.warning("leader.join_retry", attempt=attempt, exc_info=True)
                await asyncio.sleep(0.2 * 2**attempt)
        self._task = asyncio.ensure_future(self._beat())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEASE):
                await self._first.wait()

    async def _join(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._channel = await self._connection.channel(publisher_confirms=False)
        self._channel.close_callbacks.add(self._lost)
        await self._channel.set_qos(prefetch_count=1)
        queue = await self._channel.declare_queue(
            self._topo.leader, durable=True, arguments=self._topo.leader_queue_arguments()
        )
        await queue.consume(self._on_beat)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    def _lost(self, *_: object) -> None:
        """The channel closed: whoever gets the heartbeats now leads, not us.

        Without this a replica whose channel blipped kept leading for up to LEASE
        seconds while the broker already fed another one. Leader actions are
        check-and-set in the state log all the same (docs/parking.md), so two
        leaders for a moment do no action twice; this makes the moment short.
        """
        self._last_beat = -LEASE

    async def _on_beat(self, message: AbstractIncomingMessage) -> None:
        self._last_beat = time.monotonic()
        self._first.set()
        await message.ack()

    async def _beat(self) -> None:
        assert self._channel is not None
        while True:
            with contextlib.suppress(Exception):
                await self._channel.default_exchange.publish(
                    aio_pika.Message(b"", expiration=LEASE * 2), routing_key=self._topo.leader
                )
            await asyncio.sleep(BEAT)
