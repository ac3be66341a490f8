"""The state log's tail without a broker: records apply in offset order whatever the acks do."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from daemon.broker.topology import Topology
from daemon.core.records import Registered, encode
from daemon.core.state import StateLog


def delivery(offset: int, client: str, channel: object) -> SimpleNamespace:
    """What aiormq hands the tail: body, delivery tag, the stream offset header and the
    message id (a writer's mark, none here)."""
    return SimpleNamespace(
        channel=channel, body=encode(Registered(client_id=client), "r", "T"),
        delivery=SimpleNamespace(delivery_tag=offset),
        header=SimpleNamespace(properties=SimpleNamespace(headers={"x-stream-offset": offset},
                                                          message_id=None)))


async def test_a_record_whose_ack_waits_is_not_passed_by_a_later_one():
    """Hole 0: the tail applies each record before it acks. Before, it acked first: when the
    connection's write queue was full, a later delivery's ack could get through first, that
    record advanced the offset, and the earlier one was dropped as "already applied"."""
    state = StateLog(None, Topology("t"), "r")  # type: ignore[arg-type]  # no broker needed
    first_ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Channel:
        async def basic_ack(self, tag: int) -> None:
            if tag == 0:
                await first_ack  # the earlier record's ack waits ...

    channel = Channel()
    earlier = asyncio.ensure_future(state._on_delivery(delivery(0, "a", channel)))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    await state._on_delivery(delivery(1, "b", channel))  # type: ignore[arg-type]
    first_ack.set_result(None)  # ... and is sent after the later one's
    await earlier
    assert state.view.clients == {"a", "b"}
    assert state.last_offset == 1


async def test_a_record_read_again_after_a_reconnect_is_applied_once():
    """A stream consumed again from a chunk's start re-reads records: skipped by offset."""
    state = StateLog(None, Topology("t"), "r")  # type: ignore[arg-type]

    class Channel:
        async def basic_ack(self, tag: int) -> None: ...

    for offset, client in [(0, "a"), (1, "b"), (0, "a"), (1, "b"), (2, "c")]:
        await state._on_delivery(delivery(offset, client, Channel()))  # type: ignore[arg-type]
    assert state.view.clients == {"a", "b", "c"}
    assert state.replayed == 0
    assert state._records_read == 3
