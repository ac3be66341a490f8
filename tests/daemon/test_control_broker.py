"""Control messages on a running daemon: where answers may go (SPEC §5)."""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from typing import Any

import aio_pika
import orjson
import pytest
from structlog.testing import capture_logs

from tests.support import Broker, FakeShop, clients_toml, running, settings_for, wait_until

pytestmark = pytest.mark.timeout(60)


async def _send(amqp: Broker, request: dict[str, str], reply_to: str) -> None:
    async with amqp.connection.channel() as channel:
        control = await channel.get_exchange(amqp.topo.control, ensure=False)
        await control.publish(aio_pika.Message(orjson.dumps(request),
                                               correlation_id=uuid.uuid4().hex,
                                               reply_to=reply_to), routing_key="")


async def _bodies(amqp: Broker, queue: str) -> list[bytes]:
    return [m.body for m in await amqp.queue_messages(queue)]


async def test_a_reply_to_naming_an_internal_queue_gets_nothing_written_there(
    prefix, tmp_path, amqp: Broker, shop: FakeShop
):
    """Issue 12, hole 3: reply_to = the snapshot pointer or acme's queue: the daemon
    publishes nothing there (the pointer stays, acme does not park on a stray answer),
    refuses the request and logs who sent it."""
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme"]))
    targets = [amqp.topo.state_snapshot, amqp.topo.client_queue("acme")]
    async with running(settings_for(prefix, tmp_path, clients_file=path)):
        pointer = await _bodies(amqp, amqp.topo.state_snapshot)
        with capture_logs() as logs:
            for target in targets:
                await _send(amqp, {"action": "status", "client_id": "acme",
                                   "actor": "mallory"}, target)

            def refused() -> list[MutableMapping[str, Any]]:
                return [e for e in logs if e["event"] == "control.reply_to_refused"]

            await wait_until(lambda: len(refused()) == 2 or bool(amqp.named("client.parked")),
                             15, "both control messages to be handled")
        await amqp.publish("acme", "A1")
        await amqp.wait_event("item.succeeded", "acme")
        status = await amqp.control(action="status", client_id="acme")
        pointer_after = await _bodies(amqp, amqp.topo.state_snapshot)
    assert amqp.named("client.parked") == []
    assert shop.skus("acme") == ["A1"]
    assert status["client"]["state"] == "running"
    assert pointer_after == pointer
    assert [(e["action"], e["actor"], e["reply_to"], e["log_level"]) for e in refused()] == [
        ("status", "mallory", target, "warning") for target in targets]


async def test_an_answer_by_direct_reply_to_arrives(prefix, tmp_path, amqp: Broker):
    """`amq.rabbitmq.reply-to` (the broker hands the daemon its private form) is answered."""
    async with running(settings_for(prefix, tmp_path)), amqp.connection.channel() as channel:
        answers: list[dict[str, object]] = []
        replies = await channel.get_queue("amq.rabbitmq.reply-to", ensure=False)

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            answers.append(orjson.loads(message.body))

        await replies.consume(on_reply, no_ack=True)
        control = await channel.get_exchange(amqp.topo.control, ensure=False)
        await control.publish(aio_pika.Message(b'{"action": "status"}', correlation_id="c1",
                                               reply_to="amq.rabbitmq.reply-to"), routing_key="")
        await wait_until(lambda: bool(answers), 15, "the answer")
    assert answers == [{"ok": True, "clients": []}]


async def test_an_answer_nobody_waits_for_any_more_is_dropped_quietly(
    prefix, tmp_path, amqp: Broker, caplog: pytest.LogCaptureFixture,
):
    """A requester gone before its answer (a CLI interrupted, a timeout): the answer is
    dropped by the broker, not returned to the daemon, where aiormq logged the whole body
    as an unstructured error (seen in bench/blocking.py's start-up, issue 17)."""
    async with running(settings_for(prefix, tmp_path)), amqp.connection.channel() as channel:
        gone = await channel.declare_queue("", exclusive=True)
        await gone.delete()
        await _send(amqp, {"action": "status"}, gone.name)
        assert (await amqp.control(action="status"))["clients"] == []  # handled in order
    unhandled = [r for r in caplog.records if r.name.startswith("aiormq")
                 and "Unhandled message" in r.getMessage()]
    assert unhandled == []
