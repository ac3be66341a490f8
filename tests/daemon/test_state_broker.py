"""The state log on the real broker: replay, read-your-writes, bounded start-up by snapshots."""

from __future__ import annotations

import pytest

from daemon.state import StateLog
from tests.support import Broker, wait_until

pytestmark = pytest.mark.timeout(60)


async def _history(log: StateLog, clients: int, rounds: int) -> None:
    for n in range(clients):
        await log.append({"kind": "register", "client_id": f"c{n}"})
    for r in range(rounds):
        await log.append({"kind": "pause", "client_id": f"c{r % clients}", "actor": "t"})
        await log.append({"kind": "resume", "client_id": f"c{r % clients}", "actor": "t"})
    await log.append({"kind": "park", "client_id": "c1", "message_id": "M", "error": "boom"})
    await log.append({"kind": "pause", "client_id": "c2", "actor": "t"})


async def test_a_second_reader_rebuilds_the_same_view_from_the_log(amqp: Broker):
    """Replaying the log gives exactly the view the writer built live."""
    writer = StateLog(amqp.connection, amqp.topo, "writer")
    await writer.start()
    await _history(writer, clients=5, rounds=10)
    await writer.sync()
    reader = StateLog(amqp.connection, amqp.topo, "reader")
    await reader.start()
    try:
        assert reader.view == writer.view
        assert set(reader.view.parked) == {"c1"}
        assert set(reader.view.paused) == {"c2"}
        assert reader.view.clients == {f"c{n}" for n in range(5)}
    finally:
        await reader.stop()
        await writer.stop()


async def test_start_up_reads_the_latest_snapshot_and_only_the_records_after_it(amqp: Broker):
    """After 600 records with a snapshot every 100, a new reader reads fewer than 100 records."""
    writer = StateLog(amqp.connection, amqp.topo, "writer", snapshot_every=100,
                      should_snapshot=lambda: True)
    await writer.start()
    await _history(writer, clients=20, rounds=290)
    await writer.sync()
    await wait_until(lambda: writer._snapshot_offset >= writer._last_offset - 100, 10,
                     "a recent snapshot")
    reader = StateLog(amqp.connection, amqp.topo, "reader")
    await reader.start()
    try:
        assert reader.view == writer.view
        assert reader.replayed <= 101 + 1, f"read {reader.replayed} records"  # 0 is fine too
    finally:
        await reader.stop()
        await writer.stop()
