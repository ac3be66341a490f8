"""Notifications across daemon restarts: pending mail survives, recovered parks send nothing new."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.sinks import HOOK_SECRET, HookSink, MailSink
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    daemon_env,
    daemon_process,
    stays,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)
SECRET = HOOK_SECRET  # what the `hooks` fixture (tests/conftest.py) verifies with


def _env(prefix: str, tmp_path: Path, shop: FakeShop, smtp: MailSink,
         hooks: HookSink) -> dict[str, str]:
    path = tmp_path / "clients.toml"
    extra = (f'notify_emails = ["ops@acme.example"]\nwebhook_url = "{hooks.url}/acme"\n'
             f'webhook_secret = "{SECRET}"')
    path.write_text(clients_toml(shop.url, ["acme", "globex"], acme=extra))
    return daemon_env(prefix, S2SQ_CLIENTS_FILE=str(path), S2SQ_NOTIFY_RETRY_DELAYS="0.5,1",
                      **smtp.env())


async def test_a_notification_pending_over_a_restart_is_sent_once(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """SMTP down at the park; the daemon restarts (SIGTERM); SMTP comes back: exactly one mail."""
    smtp.stop()
    shop.always["X"] = 422
    env = _env(prefix, tmp_path, shop, smtp, hooks)
    async with daemon_process(env, tmp_path / "first.log") as first:
        await first.wait_logged("daemon.ready")
        await amqp.publish("acme", "X")
        await first.wait_logged("notify.retry_later")
        first.signal(signal.SIGTERM)
        assert await first.wait_exit(30) == 0
    assert smtp.mails == []
    smtp.start()
    async with daemon_process(env, tmp_path / "second.log") as second:
        await second.wait_logged("daemon.ready")
        await wait_until(lambda: len(smtp.mails) == 1, 20, "the pending mail")
        await stays(lambda: len(smtp.mails) == 1, 3.0, "the pending mail sent twice")
    assert smtp.mails[0].subject == "[s2s-queue] acme Ltd: queue stopped at SKU X"
    assert len(hooks.events("client.parked", "acme")) == 1


async def test_a_parked_client_recovered_after_kill_9_sends_nothing_new(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    shop.always["X"] = 422
    env = _env(prefix, tmp_path, shop, smtp, hooks)
    async with daemon_process(env, tmp_path / "first.log") as first:
        await first.wait_logged("daemon.ready")
        await amqp.publish("acme", "X")
        await wait_until(lambda: len(smtp.mails) == 1 and len(hooks.hooks) == 1, 20,
                         "the park mail and webhook")
        # Recovery is the point here, not a crash mid-notification: kill once both
        # deliveries and the announce are recorded (acks may still be in flight).
        await wait_until(lambda: first.count("notify.sent") == 2
                         and first.count("park.announced") == 1, 10, "the records")
        first.signal(signal.SIGKILL)
        await first.wait_exit(10)
    async with daemon_process(env, tmp_path / "second.log") as second:
        await second.wait_logged("item.still_parked")
        await amqp.publish("globex", "G1")
        await wait_until(lambda: "G1" in shop.skus(), 15, "globex to be served")
        await stays(lambda: len(smtp.mails) == 1 and len(hooks.hooks) == 1, 3.0,
                    "a second mail or webhook for the recovered park")
    assert second.count("notify.queued") == 0


async def test_an_announce_repeated_after_a_crash_is_decided_as_a_duplicate(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """The same park queued twice (a daemon died before recording the announce) mails once."""
    from daemon.core.notifications import Failure

    env = _env(prefix, tmp_path, shop, smtp, hooks)
    job = Failure("acme", "blocking", "m-1", "product.sync", "HTTP 503", 3,
                  "2026-11-28T10:00:00.000Z", {"sku": "X"}).job()
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        for _ in range(2):
            await amqp.queue_job(job)
        await wait_until(lambda: daemon.count("notify.decided", job="parked") == 2, 20,
                         "both copies decided")
        await wait_until(lambda: len(smtp.mails) == 1, 20, "the mail")
        await stays(lambda: len(smtp.mails) == 1, 1.0, "the duplicate mailed")
    assert [line["outcome"] for line in daemon.logged("notify.decided")] == ["sent", "duplicate"]


async def test_a_delivery_handed_out_twice_is_sent_once(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """A mail redelivered after a crash (sent, recorded, not acked) goes out once."""
    env = _env(prefix, tmp_path, shop, smtp, hooks)
    delivery = {"channel": "email", "id": "parked:acme:m-1:t:email", "client_id": "acme",
                "about": "m-1", "type": "product.sync", "created": time.time(), "attempt": 0,
                "mail": {"to": ["ops@acme.example"], "cc": [], "subject": "s", "text": "t",
                         "html": "<p>h</p>", "ref": "parked:acme:m-1:t"}}
    async with daemon_process(env, tmp_path / "daemon.log") as daemon:
        await daemon.wait_logged("daemon.ready")
        await amqp.queue_job(delivery, queue=amqp.topo.notify_send)
        await wait_until(lambda: daemon.count("notify.sent") == 1, 20, "the first send")
        await amqp.queue_job(delivery, queue=amqp.topo.notify_send)
        await wait_until(lambda: daemon.count("notify.already_sent") == 1, 20, "the second")
        await stays(lambda: len(smtp.mails) == 1, 0.5, "the mail sent twice")
