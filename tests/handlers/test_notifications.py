"""notification.email against a real SMTP server, notification.webhook against a real receiver."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from common import webhooks
from common.clients import ClientConfig
from daemon.settings import Settings
from handlers.context import HandlerContext
from handlers.errors import PermanentError, TransientError
from handlers.notifications import EmailPayload, WebhookPayload, send_email, send_webhook
from tests.sinks import HOOK_SECRET, HookSink, MailSink
from tests.support import free_port

from .conftest import MESSAGE_ID, make_item

SECRET = HOOK_SECRET
PASSWORD = "smtp-pa55-SECRET"
MAIL = {"to": ["buyer@example.com", "boss@example.com"], "subject": "Your order has shipped",
        "text": "Hello,\nyour order is on its way.\n", "html": "<p>On its way.</p>"}


def context(session: aiohttp.ClientSession, port: int, hooks_url: str = "",
            **smtp: Any) -> HandlerContext:
    clients = {
        "acme": ClientConfig.model_validate(
            {"webhook_url": f"{hooks_url}/acme", "webhook_secret": SECRET} if hooks_url else {}),
        "bare": ClientConfig(),
    }
    settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_from="shop@acme.example",
                        smtp_timeout=5, webhook_timeout=5, _env_file=None, **smtp)
    return HandlerContext(lambda: clients, session, default_timeout=5.0, settings=settings)


async def email(ctx: HandlerContext, **fields) -> None:
    payload = EmailPayload.model_validate({**MAIL, **fields})
    await send_email(make_item("notification.email", payload), ctx)


async def webhook(ctx: HandlerContext, client: str = "acme") -> None:
    payload = WebhookPayload(event="order.shipped", data={"order_id": "SO-1", "boxes": 2})
    await send_webhook(make_item("notification.webhook", payload, client), ctx)


async def test_an_email_arrives_with_text_and_html(smtp: MailSink, session):
    """Every recipient, the subject, both parts, our sender, a Message-ID from the item."""
    await email(context(session, smtp.port))
    [got] = smtp.mails
    assert sorted(got.rcpt) == ["boss@example.com", "buyer@example.com"]
    assert (got.sender, got.subject) == ("shop@acme.example", "Your order has shipped")
    assert got.part("plain").replace("\r\n", "\n") == MAIL["text"]
    assert got.part("html").strip() == "<p>On its way.</p>"
    assert got.message["Message-ID"].endswith("@s2s-queue>")


async def test_an_email_without_html_is_plain_text_only(smtp: MailSink, session):
    """No HTML given, no HTML part."""
    await email(context(session, smtp.port), html=None)
    [got] = smtp.mails
    assert got.message.get_content_type() == "text/plain"


async def test_the_same_item_sent_twice_has_the_same_message_id(smtp: MailSink, session):
    """A redelivered item can be recognised by the receiving mail system."""
    ctx = context(session, smtp.port)
    await email(ctx)
    await email(ctx)
    assert smtp.mails[0].message["Message-ID"] == smtp.mails[1].message["Message-ID"]


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server certificate for 127.0.0.1 that this test's clients trust (SSL_CERT_FILE)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_starttls_and_login_are_used_when_set(session, tls: ssl.SSLContext):
    """With S2SQ_SMTP_STARTTLS and a username, the mail goes encrypted and authenticated."""
    server = MailSink(password=PASSWORD, tls=tls)
    server.start()
    try:
        await email(context(session, server.port, smtp_starttls=True, smtp_username="shop",
                            smtp_password=PASSWORD))
    finally:
        server.stop()
    assert server.logins == [("shop", PASSWORD)]
    assert len(server.mails) == 1


async def test_smtp_down_is_transient(session):
    """Nobody listening: retried later; the error names the server."""
    port = free_port()
    with pytest.raises(TransientError) as info:
        await email(context(session, port))
    assert str(info.value) == (
        f"SMTP server 127.0.0.1:{port}: SMTPConnectError: Error connecting to 127.0.0.1 on port "
        f"{port}: [Errno 111] Connect call failed ('127.0.0.1', {port})"
    )


async def test_refused_recipients_are_permanent(session):
    """The server's 550 for every recipient will not change: the item fails for good."""
    server = MailSink(refuse={"boss@example.com", "buyer@example.com"})
    server.start()
    try:
        with pytest.raises(PermanentError) as info:
            await email(context(session, server.port))
    finally:
        server.stop()
    assert str(info.value) == (
        "SMTP refused every recipient: buyer@example.com (550 5.1.1 no such user here), "
        "boss@example.com (550 5.1.1 no such user here)"
    )
    assert server.mails == []


async def test_a_mail_goes_to_the_recipients_that_were_not_refused(session):
    """One refused address does not hold the others' mail (nor send it twice on a retry)."""
    server = MailSink(refuse={"boss@example.com"})
    server.start()
    try:
        with capture_logs() as logs:
            await email(context(session, server.port))
    finally:
        server.stop()
    assert [m.rcpt for m in server.mails] == [["buyer@example.com"]]
    [warning] = [e for e in logs if e["event"] == "mail.recipients_refused"]
    assert warning["refused"] == {"boss@example.com": "550 5.1.1 no such user here"}


async def test_a_wrong_smtp_password_is_permanent_and_not_shown(session):
    """535 is a configuration problem; the password never appears."""
    server = MailSink(password="the-right-one")
    server.start()
    try:
        with pytest.raises(PermanentError) as info:
            await email(context(session, server.port, smtp_username="shop",
                                smtp_password=PASSWORD))
    finally:
        server.stop()
    assert str(info.value) == "SMTP 535: 5.7.8 Authentication credentials invalid"
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"to": []}, "to"),
        ({"to": ["not-an-address"]}, "to.0"),
        ({"to": ["a@b.example\nBcc: x@y.example"]}, "to.0"),
        ({"subject": "Hi\r\nBcc: x@y.example"}, "subject"),
        ({"subject": ""}, "subject"),
        ({"text": ""}, "text"),
        ({"cc": ["a@b.example"]}, "cc"),
    ],
)
def test_email_payloads_are_checked_naming_the_field(fields, field):
    """Bad addresses, header injection and empty parts are refused before anything is sent."""
    with pytest.raises(ValidationError) as info:
        EmailPayload.model_validate({**MAIL, **fields})
    assert [".".join(map(str, e["loc"])) for e in info.value.errors()] == [field]


async def test_a_webhook_is_posted_signed_to_the_clients_url(hooks: HookSink, session):
    """`{"event", "client_id", "message_id", "data"}` with a valid X-S2S-Signature."""
    await webhook(context(session, free_port(), hooks.url))
    [hook] = hooks.hooks
    assert hook.signed
    assert hook.body == {"event": "order.shipped", "client_id": "acme", "message_id": MESSAGE_ID,
                         "data": {"order_id": "SO-1", "boxes": 2}}


async def test_a_busy_webhook_receiver_is_transient(hooks: HookSink, session):
    """503 is retried later; the message names only the receiver's scheme and host."""
    hooks.status = 503
    with pytest.raises(TransientError) as info:
        await webhook(context(session, free_port(), hooks.url))
    origin = hooks.url.rsplit("/", 1)[0]
    assert str(info.value) == f"webhook {origin} answered HTTP 503: ok"


async def test_a_refusing_webhook_receiver_is_permanent(hooks: HookSink, session):
    """410 (and a redirect, which is not followed) fail for good; the secret is never shown."""
    origin = hooks.url.rsplit("/", 1)[0]
    for status in (410, 302):
        hooks.status = status
        with pytest.raises(PermanentError) as info:
            await webhook(context(session, free_port(), hooks.url))
        assert str(info.value) == f"webhook {origin} answered HTTP {status}: ok"
        assert SECRET not in str(info.value)
    assert len(hooks.hooks) == 2


@pytest.mark.parametrize("where", ["failing", "closed", "invalid"])
async def test_a_webhook_error_never_shows_credentials_path_or_query(
    hooks: HookSink, session, closed_port, where
):
    """Whatever the URL holds besides scheme, host and port stays out of the error, even when
    the receiver fails, nobody listens or aiohttp refuses the URL (the clients file refuses
    credentials; this is the second line)."""
    hooks.status = 500
    origin = hooks.url.rsplit("/", 1)[0]
    port = {"failing": origin.rsplit(":", 1)[1], "closed": str(closed_port),
            "invalid": "99999"}[where]
    url = f"http://hooks:{SECRET}@127.0.0.1:{port}/hooks/acme?token={SECRET}"
    with pytest.raises(webhooks.WebhookError) as info:
        await webhooks.post(session, url, "signing-key", b"{}", 5)
    expected = {
        "failing": f"webhook http://127.0.0.1:{port} answered HTTP 500: ok",
        "closed": f"webhook http://127.0.0.1:{port}: ClientConnectorError: Cannot connect to "
                  f"host 127.0.0.1:{port} ssl:default [Connect call failed "
                  f"('127.0.0.1', {port})]",
        "invalid": "webhook http://127.0.0.1: not a valid URL",
    }[where]
    assert str(info.value) == expected
    assert SECRET not in str(info.value)
    assert info.value.permanent is (where == "invalid")


async def test_a_client_without_a_webhook_url_fails_naming_the_settings(session):
    """The error says what to add to the clients file."""
    with pytest.raises(PermanentError) as info:
        await webhook(context(session, free_port()), client="bare")
    assert str(info.value) == (
        "client 'bare' has no webhook_url in the clients file ([clients.bare] webhook_url and "
        "webhook_secret)"
    )


def test_webhook_events_are_names_not_sentences():
    """An event name with spaces or over 100 characters is refused, naming the field."""
    for event in ("order shipped", "x" * 101, ""):
        with pytest.raises(ValidationError, match="event"):
            WebhookPayload(event=event, data={})
