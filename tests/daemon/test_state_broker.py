"""The state log on the real broker: offset order, read-your-writes, snapshots, retention."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage
from structlog.testing import capture_logs

from daemon.broker.topology import Topology
from daemon.core.records import (
    Failed,
    Marker,
    Parked,
    Paused,
    Record,
    Registered,
    Resumed,
    StoredMessage,
    decode,
)
from daemon.core.state import PART_BYTES, StateLog
from daemon.core.view import View
from tests.support import Broker, wait_until

pytestmark = pytest.mark.timeout(120)


async def _history(log: StateLog, clients: int, rounds: int) -> None:
    for n in range(clients):
        await log.append(Registered(client_id=f"c{n}"))
    for r in range(rounds):
        await log.append(Paused(client_id=f"c{r % clients}", actor="t"))
        await log.append(Resumed(client_id=f"c{r % clients}", actor="t"))
    await log.append(Parked(client_id="c1", message_id="M", error="boom"))
    await log.append(Paused(client_id="c2", actor="t"))


def order(n: int, size: int = 1000) -> Failed:
    """A failed order of about `size` bytes, as the non-blocking pool records it."""
    body = orjson.dumps({"order": {"id": f"o{n}", "lines": "x" * size}}).decode()
    return Failed(message_id=f"o{n}", fid=uuid.uuid4().hex, client_id=f"c{n % 50}",
                  type="order.add_to_source", error="HTTP 422", failed_at="T",
                  payload=orjson.loads(body), message=StoredMessage(body=body))


async def _append_all(log: StateLog, records: list[Record], concurrency: int = 32) -> None:
    queue = list(reversed(records))

    async def worker() -> None:
        while queue:
            await log.append(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _read_stream(amqp: Broker, name: str) -> list[tuple[int, bytes]]:
    """Every message of a stream with its offset, read from the first one kept."""
    found: list[tuple[int, bytes]] = []
    async with amqp.connection.channel() as channel:
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(name, ensure=False)
        marker = uuid.uuid4().hex
        await channel.default_exchange.publish(
            aio_pika.Message(orjson.dumps({"kind": "marker", "id": marker})), routing_key=name)
        done = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            await message.ack()
            found.append((_offset(message), message.body))
            if marker.encode() in message.body:
                done.set()

        tag = await queue.consume(take, arguments={"x-stream-offset": "first"})
        await asyncio.wait_for(done.wait(), 60)
        await queue.cancel(tag)
    return found


def _offset(message: AbstractIncomingMessage) -> int:
    offset = (message.headers or {})["x-stream-offset"]
    assert isinstance(offset, int)
    return offset


def _fold(messages: list[tuple[int, bytes]]) -> View:
    view = View()
    for offset, body in messages:
        record = decode(body)
        if record is not None:
            view.apply(record, offset)
    return view


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


async def test_records_appended_concurrently_all_reach_the_view_in_offset_order(amqp: Broker):
    """Hole 0: 20,000 failed 1 KB items from 32 writers: the live view misses none of them.

    The old tail acked each record before checking its offset, and aio-pika ran
    the callbacks side by side: a later record could pass an earlier one, which
    was then dropped as "already applied".
    """
    writer = StateLog(amqp.connection, amqp.topo, "writer")
    await writer.start()
    try:
        await _append_all(writer, [order(n) for n in range(20_000)])
        await writer.sync()
        stream = await _read_stream(amqp, amqp.topo.state)
        assert len(writer.view.failed) == 20_000
        assert writer.view == _fold(stream)
    finally:
        await writer.stop()


async def test_start_up_reads_the_latest_snapshot_and_only_the_records_after_it(amqp: Broker):
    """After 600 records with a snapshot every 100, a new reader applies at most 100 records."""
    writer = StateLog(amqp.connection, amqp.topo, "writer", snapshot_every=100,
                      should_snapshot=lambda: True)
    await writer.start()
    await _history(writer, clients=20, rounds=290)
    await writer.sync()
    await wait_until(lambda: writer._snapshot_offset >= writer.last_offset - 120, 10,
                     "a recent snapshot")
    reader = StateLog(amqp.connection, amqp.topo, "reader")
    await reader.start()
    try:
        assert reader.view == writer.view
        assert reader.replayed <= 101 + 1, f"read {reader.replayed} records"  # 0 is fine too
    finally:
        await reader.stop()
        await writer.stop()


async def test_a_large_view_is_snapshotted_in_parts_none_over_a_mebibyte(amqp: Broker):
    """Hole 6: 10,000 clients and 12,000 failed 1 KB orders; every part is small, bodies once.

    The old snapshot was one message holding every failed item's body: past the
    broker's max_message_size the publish failed and no snapshot was stored again.
    """
    writer = StateLog(amqp.connection, amqp.topo, "writer")
    await writer.start()
    try:
        await _append_all(writer, [Registered(client_id=f"c{n}") for n in range(10_000)])
        await _append_all(writer, [order(n) for n in range(12_000)])
        await writer.append(Parked(client_id="c7", message_id="M", error="boom"))
        await writer.write_snapshot()
        stream = await _read_stream(amqp, amqp.topo.state)
        parts = [(o, b) for o, b in stream if b.startswith(b'{"kind":"snapshot"')]
        assert len(parts) >= 2
        assert max(len(b) for _, b in parts) < PART_BYTES + 70_000
        assert sum(len(b) for _, b in parts) < 4_000_000, "bodies were copied into the snapshot"
        reader = StateLog(amqp.connection, amqp.topo, "reader")
        await reader.start()
        try:
            assert reader.view == writer.view
            assert reader.replayed <= 2
        finally:
            await reader.stop()
    finally:
        await writer.stop()


async def _first_offset(amqp: Broker, name: str) -> int:
    async with amqp.connection.channel() as channel:
        await channel.set_qos(prefetch_count=1)
        queue = await channel.get_queue(name, ensure=False)
        first: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def take(message: AbstractIncomingMessage) -> None:
            if not first.done():
                first.set_result(_offset(message))
            await message.ack()

        tag = await queue.consume(take, arguments={"x-stream-offset": "first"})
        offset = await asyncio.wait_for(first, 30)
        await queue.cancel(tag)
    return offset


async def test_replay_is_right_after_retention_deleted_everything_before_the_snapshot(
    prefix: str, amqp: Broker
):
    """Retention of 6 s: failed items older than half of it are written again with the snapshot.

    Then the broker deletes every segment before the snapshot (the first failed
    records included), and a new reader still rebuilds the whole view.
    """
    topo = Topology(prefix, state_retention_s=6, state_segment_bytes=20_000)
    writer = StateLog(amqp.connection, topo, "writer", snapshot_every=1_000_000)
    await writer.start()
    try:
        await _append_all(writer, [order(n, 500) for n in range(40)], concurrency=4)
        await writer.sync()
        originals = writer.last_offset  # every failed item's first record is at or before
        filler = "x" * 2000
        for _ in range(12):  # the originals' segments hold nothing else
            await writer.append(Marker(id=filler))
        await writer.append(Parked(client_id="c3", message_id="M", error="boom"))
        await writer.append(Paused(client_id="c4"))
        await asyncio.sleep(3.2)  # past half the retention: the bodies get carried
        await writer.write_snapshot()
        await asyncio.sleep(3.0)  # the first records are past the retention, the snapshot not
        for _ in range(60):  # roll segments: the broker applies retention when one rolls
            await writer.append(Marker(id=filler))
        deadline = asyncio.get_running_loop().time() + 2.5
        while (first := await _first_offset(amqp, topo.state)) <= originals:
            assert asyncio.get_running_loop().time() < deadline, (
                f"retention kept offset {first}: the test proves nothing")
            await writer.append(Marker(id=filler))
            await asyncio.sleep(0.5)
        reader = StateLog(amqp.connection, topo, "reader")
        await reader.start()
        try:
            assert reader.view == writer.view
            assert len(reader.view.failed) == 40
            assert all(e.record.message is not None for e in reader.view.failed.values())
            assert set(reader.view.parked) == {"c3"}
        finally:
            await reader.stop()
    finally:
        await writer.stop()


async def _replay_with_pointer(amqp: Broker, pointer: dict[str, object]) -> None:
    """A writer's history and `pointer` in the snapshot queue: a new reader starts (in 30 s)
    and builds the writer's view."""
    writer = StateLog(amqp.connection, amqp.topo, "writer")
    await writer.start()
    try:
        await _history(writer, clients=3, rounds=3)
        async with amqp.connection.channel(publisher_confirms=True) as channel:
            await channel.default_exchange.publish(
                aio_pika.Message(orjson.dumps(pointer)), routing_key=amqp.topo.state_snapshot)
        reader = StateLog(amqp.connection, amqp.topo, "reader")
        await asyncio.wait_for(reader.start(), 30)
        try:
            assert reader.view == writer.view
        finally:
            await reader.stop()
    finally:
        await writer.stop()
        # The planted pointer goes too: the fixture's purge reads the state log to find
        # client queues, and would wait POINTER_PATIENCE (30 s, no longer patched) for it.
        async with amqp.connection.channel() as channel:
            await (await channel.get_queue(amqp.topo.state_snapshot, ensure=False)).purge()


async def test_a_pointer_to_a_missing_snapshot_falls_back_to_a_full_replay(amqp: Broker):
    """Something else in the snapshot queue (or a snapshot gone): start-up reads everything."""
    await _replay_with_pointer(amqp, {"snapshot": "nowhere", "covers": 2, "from": 0,
                                      "parts": 3})


async def test_a_pointer_beyond_the_end_of_a_replaced_stream_falls_back_to_a_full_replay(
    amqp: Broker, monkeypatch: pytest.MonkeyPatch,
):
    """The state stream was deleted and declared again, its snapshot pointer left over:
    start-up reads the new stream from its first record instead of waiting, forever, for
    an offset it will not reach (found by bench/admin.py, issue 17)."""
    monkeypatch.setattr("daemon.core.state.POINTER_PATIENCE", 2.0)
    with capture_logs() as logs:
        await _replay_with_pointer(amqp, {"snapshot": "old", "covers": 1_000_000,
                                          "from": 1_000_001, "parts": 2})
    [error] = [e for e in logs if e["event"] == "state.pointer_beyond_stream"]
    assert error["error"] == (
        f"the snapshot pointer in {amqp.topo.state_snapshot!r} names offset 1000001, but the"
        f" state stream {amqp.topo.state!r} delivered nothing from there in 2 s: the stream"
        " was deleted or replaced since; reading it from its first record")


async def test_a_stream_declared_with_another_retention_is_kept(amqp: Broker):
    """Changing S2SQ_STATE_RETENTION on a running deployment warns and goes on."""
    first = StateLog(amqp.connection, amqp.topo, "first")
    await first.start()
    await first.append(Registered(client_id="acme"))
    await first.stop()
    other = replace(amqp.topo, state_retention_s=3600)
    second = StateLog(amqp.connection, other, "second")
    await second.start()
    try:
        assert second.view.clients == {"acme"}
    finally:
        await second.stop()


def _count_appends(log: StateLog) -> list[Record]:
    """Every record `log` appends from now on, markers included, in order."""
    sent: list[Record] = []
    append = log.append

    async def counting(record: Record, patience: float = 300.0, mark: str | None = None) -> None:
        sent.append(record)
        await append(record, patience, mark)

    log.append = counting  # type: ignore[method-assign]
    return sent


async def test_syncs_asked_together_share_a_marker(amqp: Broker):
    """1,000 consumers placed at once each read the log up to now: a few markers, not 1,000."""
    log = StateLog(amqp.connection, amqp.topo, "reader")
    await log.start()
    sent = _count_appends(log)
    try:
        await asyncio.gather(*(log.sync() for _ in range(1000)))
        await log.append(Registered(client_id="late"))
        await log.sync()  # a sync after a write still reads it
        assert "late" in log.view.clients
    finally:
        await log.stop()
    markers = [r for r in sent if isinstance(r, Marker)]
    assert 1 <= len(markers) <= 3


async def test_a_record_appended_and_read_is_in_the_view_with_all_before_it_and_no_marker(
    amqp: Broker,
):
    """`append_and_read` promises what `append` then `sync` do, in one record: when it
    returns, the record and every record appended before the call (by another replica
    too) are in the view; it sends no marker."""
    writer = StateLog(amqp.connection, amqp.topo, "writer")
    reader = StateLog(amqp.connection, amqp.topo, "reader")
    await writer.start()
    await reader.start()
    sent = _count_appends(reader)
    try:
        for n in range(50):
            await writer.append(Registered(client_id=f"w{n}"))
            await reader.append_and_read(Paused(client_id=f"w{n}", actor="t", op=f"op{n}"))
            assert f"w{n}" in reader.view.clients
            assert reader.view.ops.get(f"op{n}") == "reader"
    finally:
        await reader.stop()
        await writer.stop()
    assert [type(r) for r in sent] == [Paused] * 50
