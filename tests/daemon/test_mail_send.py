"""Sending mail over a real SMTP server on loopback: login, refusals, and no secret in errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from common import mail
from daemon.settings import Settings
from tests.sinks import MailSink
from tests.support import free_port

PASSWORD = "hunter2-smtp-secret"
MAIL = mail.Mail(("ops@acme.example",), ("admin@s2s.example",), "subject", "text body",
                 "<p>html body</p>", "parked:acme:m1:t")


def settings(port: int, **kw) -> Settings:
    return Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_from="s2s@x.example",
                    _env_file=None, **kw)


@contextmanager
def running_sink(**kw: Any) -> Iterator[MailSink]:
    """A real SMTP server on loopback for the block (aiosmtpd), stopped after it."""
    sink = MailSink(**kw)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


async def test_a_mail_arrives_with_both_parts_and_every_recipient():
    with running_sink() as sink:
        await mail.send(MAIL, settings(sink.port))
    [got] = sink.mails
    assert sorted(got.rcpt) == ["admin@s2s.example", "ops@acme.example"]
    assert got.sender == "s2s@x.example"
    assert (got.part("plain").strip(), got.part("html").strip()) == ("text body",
                                                                      "<p>html body</p>")


async def test_login_is_used_when_a_username_is_set():
    with running_sink(password=PASSWORD) as sink:
        await mail.send(MAIL, settings(sink.port, smtp_username="s2s", smtp_password=PASSWORD))
    assert sink.logins == [("s2s", PASSWORD)]
    assert len(sink.mails) == 1


async def test_a_wrong_password_is_an_error_that_does_not_show_it():
    with running_sink(password="the-right-one") as sink, pytest.raises(mail.MailError) as caught:
        await mail.send(MAIL, settings(sink.port, smtp_username="s2s", smtp_password=PASSWORD))
    assert PASSWORD not in str(caught.value)
    assert str(caught.value).startswith("SMTP 535")
    assert sink.mails == []


async def test_smtp_down_is_a_transient_error_naming_the_server_not_the_password():
    port = free_port()
    with pytest.raises(mail.MailError) as caught:
        await mail.send(MAIL, settings(port, smtp_username="s2s", smtp_password=PASSWORD))
    assert caught.value.permanent is False
    assert f"SMTP server 127.0.0.1:{port}" in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_a_subject_with_a_line_break_is_sent_as_one_line_without_the_added_header():
    """Whatever reaches a header is made one line: the mail is built and sent, and the text
    after the line break stays in the subject instead of becoming a Bcc header."""
    evil = mail.Mail(("ops@acme.example",), (), "Parked: SKU EVIL\r\nBcc: someone@example.com",
                     "text body", "", "parked:acme:m2:t")
    with running_sink() as sink:
        await mail.send(evil, settings(sink.port))
    [got] = sink.mails
    assert got.subject == "Parked: SKU EVIL Bcc: someone@example.com"
    assert got.message["Bcc"] is None
    assert got.rcpt == ["ops@acme.example"]
