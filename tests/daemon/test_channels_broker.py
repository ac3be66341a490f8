"""The consumer pool's placing on a real broker: many starts at once go side by side."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from daemon.broker.channels import FILLING, ConsumerChannels
from tests.proxy import broker_proxy
from tests.support import AMQP_URL, wait_until

pytestmark = pytest.mark.timeout(60)


@dataclass(eq=False)
class Gated:
    """A consumer whose start waits for `gate`, noting the channel it was given."""

    client_id: str
    gate: asyncio.Event
    channel: AbstractChannel | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    lost: int = 0

    @property
    def parked(self) -> Any:
        return None

    async def start(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.started.set()
        await self.gate.wait()

    def channel_lost(self) -> None:
        self.lost += 1
        self.started.clear()

    # What a cycle asks (daemon.broker.replicas): never busy, never parked.
    busy = False
    holds_park = False

    def hold(self) -> None:
        pass

    def unhold(self) -> None:
        pass

    async def wait_idle(self) -> None:
        pass


async def test_many_starts_at_once_are_spread_over_filling_channels_then_fill_them():
    """32 starts under way at once use FILLING channels (a channel answers one method at a
    time: on one channel 5,000 quorum queues took 62 s to start); later ones fill those."""
    pool = ConsumerChannels([AMQP_URL], "test filling", 100, lambda _c: False)
    await pool.start()
    try:
        gate = asyncio.Event()
        first = [Gated(f"c{n:02}", gate) for n in range(2 * FILLING)]
        placing = [asyncio.ensure_future(pool.place(c)) for c in first]
        await asyncio.wait_for(asyncio.gather(*(c.started.wait() for c in first)), 10)
        channels = {id(c.channel) for c in first}
        assert len(channels) == FILLING, "the starts under way were not spread"
        gate.set()
        await asyncio.gather(*placing)
        later = [Gated(f"d{n:02}", gate) for n in range(50)]
        for consumer in later:  # one after another: no start under way, no new channel
            await pool.place(consumer)
        assert {id(c.channel) for c in first + later} == channels
    finally:
        await pool.close()


async def test_after_a_lost_connection_the_consumers_are_placed_again_side_by_side():
    """A reconnect starts every consumer again: many at once, over FILLING channels, not one
    after another (5,000 quorum queues took about 9 s on one channel after a restart)."""
    async with broker_proxy() as proxy:
        pool = ConsumerChannels([proxy.url], "test recovery", 100, lambda _c: False)
        await pool.start()
        try:
            gate = asyncio.Event()
            gate.set()
            consumers = [Gated(f"c{n:02}", gate) for n in range(2 * FILLING)]
            await asyncio.gather(*(pool.place(c) for c in consumers))
            gate.clear()  # the starts after the reconnect wait
            proxy.cut()
            await wait_until(lambda: all(c.lost for c in consumers), 15, "the loss to be seen")
            await wait_until(lambda: sum(c.started.is_set() for c in consumers) >= FILLING,
                             15, f"{FILLING} consumers to be under way again at once")
            again = {id(c.channel) for c in consumers if c.started.is_set()}
            assert len(again) == FILLING
            gate.set()
            await wait_until(lambda: all(c.started.is_set() for c in consumers), 15,
                             "every consumer to be placed again")
        finally:
            await pool.close()
