"""The history writer and index on the real broker: a stop writes what is buffered, the
index reads it back, and a batch the broker does not take is logged and dropped."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from daemon.core.history import HistoryIndex, HistoryWriter, history_parts
from daemon.settings import Settings
from tests.support import AMQP_URL, Broker, wait_until

pytestmark = pytest.mark.timeout(60)


async def test_a_stop_writes_what_is_buffered_and_the_index_reads_it_back(amqp: Broker):
    """Entries added right before the stop reach the stream; a new index finds them."""
    settings = Settings(amqp_url=AMQP_URL, prefix=amqp.topo.prefix)
    async with history_parts(amqp.connection, settings, index=False) as (writer, _):
        assert writer is not None
        for n in range(3):
            writer.add("acme", f"M{n}", "product.sync", "succeeded", 1, 1.5, None)
        writer.add("globex", "G", None, "skipped", None, None, None)
    index = HistoryIndex(amqp.connection, amqp.topo, keep=2, replay_s=60)
    await index.start()
    try:
        await wait_until(lambda: len(index.page("acme", 10, None)[0]) == 2, 10,
                         "acme's last two entries in the index")
        await wait_until(lambda: len(index.page("globex", 10, None)[0]) == 1, 10,
                         "globex's entry in the index")
    finally:
        await index.stop()
    assert [i["message_id"] for i in index.page("acme", 10, None)[0]] == ["M2", "M1"]
    [skipped] = index.page("globex", 10, None)[0]
    assert (skipped["outcome"], skipped["attempts"], skipped["type"]) == ("skipped", None, None)


async def test_a_batch_the_broker_does_not_take_is_logged_and_dropped(amqp: Broker):
    """No stream (deleted, say): the flush logs `history.not_written` and goes on."""
    writer = HistoryWriter(amqp.connection, amqp.topo)  # its stream is never declared
    await writer.start()
    writer.add("acme", "M", "product.sync", "succeeded", 1, 1.5, None)
    with capture_logs() as logs:
        await writer.stop()
    [line] = [e for e in logs if e["event"] == "history.not_written"]
    assert line["entries"] == 1
    assert writer.dropped == 1
