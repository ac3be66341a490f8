"""Failure notifications end to end: real broker, real SMTP server, real webhook receiver."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.sinks import HOOK_SECRET, HookSink, MailSink
from tests.support import (
    Broker,
    FakeShop,
    clients_toml,
    close_connection,
    free_port,
    running,
    scrape_metrics,
    settings_for,
    stays,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)
SECRET = HOOK_SECRET  # what the `hooks` fixture (tests/conftest.py) verifies with


def _settings(prefix: str, tmp_path: Path, shop: FakeShop, smtp: MailSink, hooks: HookSink,
              **kw):
    """acme and globex mail their ops and get webhooks; initech has neither."""
    extra = {c: f'notify_emails = ["ops@{c}.example"]\nwebhook_url = "{hooks.url}/{c}"\n'
                f'webhook_secret = "{SECRET}"' for c in ("acme", "globex")}
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex", "initech"], **extra))
    kw.setdefault("nonblocking_retry_delays", "0.3")
    kw.setdefault("notify_retry_delays", "0.3,0.6")
    return settings_for(prefix, tmp_path, clients_file=path, admin_emails="admin@s2s.example",
                        console_url="https://queue.example", **smtp.settings(), **kw)


async def test_a_park_after_three_attempts_sends_exactly_one_mail_and_one_webhook(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """Three 503s park acme: one mail to its ops (admins copied) saying what, why and what to do."""
    shop.script["ABC-1"] = [503, 503, 503]
    async with running(_settings(prefix, tmp_path, shop, smtp, hooks)):
        await amqp.publish("acme", "ABC-1", message_id="m-park")
        await wait_until(lambda: len(smtp.mails) == 1, 20, "the park mail")
        await wait_until(lambda: len(hooks.hooks) == 1, 20, "the park webhook")
        await stays(lambda: len(smtp.mails) == 1 and len(hooks.hooks) == 1, 1.0,
                    "a second notification for one park")
    [mail] = smtp.mails
    assert sorted(mail.rcpt) == ["admin@s2s.example", "ops@acme.example"]
    assert (mail.message["To"], mail.message["Cc"]) == ("ops@acme.example", "admin@s2s.example")
    assert mail.subject == "[s2s-queue] acme Ltd: queue stopped at SKU ABC-1"
    text = mail.part("plain")
    error = 'PUT /acme/products/ABC-1 → HTTP 503: {"message":"sku rejected by the shop"}'
    for fact in ("acme Ltd (acme)", "SKU ABC-1", "product.sync", "m-park", "Attempts:    3",
                 "blocking (strict order)", error, "https://queue.example/clients/acme",
                 "s2s-queue retry acme --message-id m-park"):
        assert fact in text, f"{fact!r} missing from:\n{text}"
    assert "https://queue.example/clients/acme" in mail.part("html")
    [hook] = hooks.hooks
    assert hook.signed
    assert (hook.body["event"], hook.body["client_id"], hook.body["message_id"]) == (
        "client.parked", "acme", "m-park")
    assert (hook.body["data"]["error"], hook.body["data"]["attempts"]) == (error, 3)


async def test_a_retry_that_fails_again_is_quiet_and_the_resume_is_a_webhook_only(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """A failed retry within the quiet period sends nothing; skip → a resume webhook, no mail."""
    shop.always["X"] = 422
    async with running(_settings(prefix, tmp_path, shop, smtp, hooks)):
        await amqp.publish("acme", "X")
        await wait_until(lambda: len(smtp.mails) == 1, 20, "the park mail")
        answer = await amqp.control(action="retry", client_id="acme")
        assert answer["outcome"] == "failed"
        await amqp.control(action="skip", client_id="acme", reason="bad data")
        await wait_until(lambda: bool(hooks.events("client.resumed")), 20, "the resume webhook")
        await stays(lambda: len(smtp.mails) == 1, 1.0, "a mail for the retry or the resume")
    assert [h.body["event"] for h in hooks.hooks] == ["client.parked", "client.resumed"]
    assert hooks.hooks[1].body["data"]["how"] == "skip"
    assert all(h.signed for h in hooks.hooks)


async def test_a_final_non_blocking_failure_sends_one_mail_with_why_it_failed(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    shop.always["1001"] = 422
    async with running(_settings(prefix, tmp_path, shop, smtp, hooks)):
        await amqp.order("globex", "1001")
        await wait_until(lambda: len(smtp.mails) == 1 and len(hooks.hooks) == 1, 20,
                         "the failure mail and webhook")
        await stays(lambda: len(smtp.mails) == 1, 0.8, "a second mail")
    [mail] = smtp.mails
    assert mail.subject == "[s2s-queue] globex Ltd: order 1001 failed"
    text = mail.part("plain")
    for fact in ("order.add_to_source", "Message id:  1001", "non-blocking", "HTTP 422",
                 "s2s-queue failed retry 1001", "https://queue.example/failed?client_id=globex"):
        assert fact in text, f"{fact!r} missing from:\n{text}"
    assert hooks.hooks[0].body["event"] == "item.failed"
    assert hooks.hooks[0].body["data"]["final"] is True


async def test_after_the_broker_closes_the_connection_orders_and_their_mails_go_on(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """The broker closes the daemon's connections (a restart, a network cut): once it is
    back, the shared queue and the notification queues are consumed again. Before, only
    the client queues were: orders and every mail stopped until the daemon restarted."""
    shop.always["1002"] = 422
    async with running(_settings(prefix, tmp_path, shop, smtp, hooks)) as sup:
        await close_connection(f"s2s-queue {sup.replica}")
        await wait_until(lambda: sup.recoveries >= 1 and sup.connected, 30, "a reconnect")
        await amqp.order("globex", "1001")
        await amqp.order("globex", "1002")
        await wait_until(lambda: sorted(shop.skus()) == ["1001", "1002"], 20,
                         "both orders at the back office")
        await wait_until(lambda: len(smtp.mails) == 1 and len(hooks.hooks) == 1, 20,
                         "the failure mail and webhook")
    assert smtp.mails[0].subject == "[s2s-queue] globex Ltd: order 1002 failed"


async def test_fifty_failures_in_a_window_give_the_first_mail_and_one_digest(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """A storm: the first failure is mailed at once, the other 49 in one digest after the window."""
    for n in range(50):
        shop.always[f"O{n}"] = 422
    window = 4.0
    async with running(_settings(prefix, tmp_path, shop, smtp, hooks,
                                 notify_digest_window=window)):
        started = time.monotonic()
        for n in range(50):
            await amqp.order("acme", f"O{n}")
        await wait_until(lambda: len(smtp.mails) == 1, 20, "the first failure mail")
        await wait_until(lambda: len(hooks.events("item.failed")) == 50, 20, "50 webhooks")
        assert time.monotonic() - started < window, "the storm took longer than the window"
        await wait_until(lambda: len(smtp.mails) == 2, window + 10, "the digest")
        await stays(lambda: len(smtp.mails) == 2, window + 1, "a third mail after the digest")
    first, digest = smtp.mails
    assert first.subject == "[s2s-queue] acme Ltd: order O0 failed"
    assert digest.subject == "[s2s-queue] acme Ltd: 49 more failed items"
    text = digest.part("plain")
    assert "order.add_to_source: 49 failed" in text
    assert "The first 20:" in text
    assert text.count("HTTP 422") == 20


async def test_with_smtp_down_parks_and_other_clients_go_on_and_the_mail_comes_later(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """Parks and items are on time with SMTP down; the log and /metrics show the retries."""
    smtp.stop()
    shop.always["X"] = 422
    port = free_port()
    async with running(_settings(prefix, tmp_path, shop, smtp, hooks, http_port=port)) as sup:
        await amqp.publish("acme", "X")
        started = time.monotonic()
        for n in range(20):
            await amqp.publish("globex", f"G{n}")
        await amqp.wait_event("client.parked", "acme")
        await wait_until(lambda: len(shop.skus("globex")) == 20, 10, "globex's 20 items")
        took = time.monotonic() - started
        outbox = sup.outbox
        assert outbox is not None
        await wait_until(lambda: outbox.count("retried") >= 2, 20, "delivery retries")
        assert smtp.mails == []
        assert took < 5, f"globex took {took:.1f} s with SMTP down"
        down = await scrape_metrics(port)
        smtp.start()
        await wait_until(lambda: len(smtp.mails) == 1, 20, "the mail once SMTP is back")
        await stays(lambda: len(smtp.mails) == 1, 1.5, "the mail sent twice")
        up = await scrape_metrics(port)
    assert down['s2s_notification_deliveries_total{channel="email",outcome="retried"}'] >= 2
    assert 's2s_notification_deliveries_total{channel="email",outcome="sent"}' not in down
    assert up['s2s_notification_deliveries_total{channel="email",outcome="sent"}'] == 1
    assert up['s2s_notification_jobs_total{job="parked"}'] == 1
    assert up["s2s_notification_backlog"] == 0
    assert smtp.mails[0].subject == "[s2s-queue] acme Ltd: queue stopped at SKU X"
    assert len(hooks.events("client.parked", "acme")) == 1


async def test_a_client_without_addresses_mails_only_the_admins_and_gets_no_webhook(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    shop.always["X"] = 400
    async with running(_settings(prefix, tmp_path, shop, smtp, hooks)):
        await amqp.publish("initech", "X")
        await wait_until(lambda: len(smtp.mails) == 1, 20, "the admin mail")
        await stays(lambda: not hooks.hooks, 0.5, "a webhook for a client without one")
    assert smtp.mails[0].rcpt == ["admin@s2s.example"]
    assert smtp.mails[0].message["Cc"] is None


async def test_a_refused_smtp_login_keeps_the_mail_waiting_instead_of_dropping_it(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, hooks: HookSink
):
    """Our SMTP settings are wrong, not the mail: it is retried (until fixed), never given up."""
    smtp = MailSink(password="the-right-one")
    smtp.start()
    try:
        shop.always["X"] = 422
        settings = _settings(prefix, tmp_path, shop, smtp, hooks, smtp_username="s2s",
                             smtp_password="a-wrong-one")
        async with running(settings) as sup:
            await amqp.publish("acme", "X")
            outbox = sup.outbox
            assert outbox is not None
            await wait_until(lambda: outbox.count("retried") >= 2, 20, "delivery retries")
            assert outbox.count("given_up") == 0
            assert smtp.mails == []
            assert ("s2s", "a-wrong-one") in smtp.logins
    finally:
        smtp.stop()


async def test_a_sku_with_a_line_break_parks_naming_the_field_and_the_park_mail_arrives(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink
):
    """`EVIL\\r\\nBcc: ...` is refused at the edge; the park mail is still built and sent, with
    a one-line subject and no Bcc header (before, it was retried every second for ever)."""
    sku = "EVIL\r\nBcc: someone@example.com"
    async with running(_settings(prefix, tmp_path, shop, smtp, hooks)):
        await amqp.publish("acme", sku, message_id="m-evil")
        [parked] = await amqp.wait_event("client.parked", "acme")
        await wait_until(lambda: len(smtp.mails) == 1, 20, "the park mail")
    assert parked["error"] == (
        "payload is not valid for product.sync: sku: must be one line of text: U+000D is not "
        "allowed"
    )
    assert shop.seen == []
    [mail] = smtp.mails
    # Python folds this long subject right after "Subject:"; unfolded, it starts with a space.
    assert mail.subject.lstrip() == (
        "[s2s-queue] acme Ltd: queue stopped at SKU EVIL Bcc: someone@example.com"
    )
    assert mail.message["Bcc"] is None
    assert sorted(mail.rcpt) == ["admin@s2s.example", "ops@acme.example"]


@pytest.mark.parametrize(
    ("step", "job", "error"),
    [
        ("decide", {"job": "parked", "id": ["not", "an", "id"], "client_id": "acme",
                    "message_id": "m-broken", "type": "product.sync", "queue": "blocking"},
         "TypeError: unhashable type: 'list'"),
        ("send", {"channel": "email", "id": "broken:email", "client_id": "acme",
                  "about": "m-broken", "type": "product.sync", "queue": "blocking",
                  "mail": {"to": ["ops@acme.example"]}, "created": 0, "attempt": 0},
         "KeyError: 'cc'"),
    ],
)
async def test_a_notification_that_cannot_be_built_is_reported_once_instead_of_looping(
    prefix, tmp_path, amqp: Broker, shop: FakeShop, smtp: MailSink, hooks: HookSink,
    step, job, error
):
    """A job that crashes its step is tried five times, then given up: one error log line,
    one notification.failed event, one count in /metrics, and nothing left in the queues
    (before, it was put back and crashed every second for ever)."""
    port = free_port()
    queue = None if step == "decide" else amqp.topo.notify_send
    with capture_logs() as logs:
        async with running(_settings(prefix, tmp_path, shop, smtp, hooks, http_port=port)):
            await amqp.queue_job(job, queue)
            [event] = await amqp.wait_event("notification.failed", "acme", timeout=20)
            await stays(lambda: len(amqp.named("notification.failed")) == 1, 1.5,
                        "a second notification.failed")
            metrics = await scrape_metrics(port)
    assert {k: event[k] for k in ("message_id", "type", "queue", "step", "attempts", "error")} == {
        "message_id": "m-broken", "type": "product.sync", "queue": "blocking", "step": step,
        "attempts": 5, "error": error}
    assert metrics[f's2s_notification_failures_total{{step="{step}"}}'] == 1
    assert metrics["s2s_notification_backlog"] == 0
    failed = [e for e in logs if e["event"] == "notify.failed"]
    assert [(e["log_level"], e["client_id"], e["message_id"]) for e in failed] == [
        ("error", "acme", "m-broken")]
    assert len([e for e in logs if e["event"] == "notify.crashed"]) == 5
    assert smtp.mails == []
