"""Real receivers for notifications: an SMTP server (aiosmtpd) and a webhook server (aiohttp)."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import orjson
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from common.webhooks import SIGNATURE_HEADER, verify
from tests.support import free_port, serve


@dataclass
class Mail:
    """One received email: the envelope and the parsed message."""

    sender: str
    rcpt: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"the mail has no text/{subtype} part"
        return str(body.get_content())


@dataclass
class MailSink:
    """An SMTP server on loopback that keeps every mail; `stop()`/`start()` take it down and up."""

    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)  # (username, password) tried
    password: str | None = None  # when set, AUTH is offered and must use it
    tls: ssl.SSLContext | None = None  # when set, STARTTLS is offered and required
    refuse: set[str] = field(default_factory=set)  # recipients answered with 550
    _controller: Controller | None = None

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        user, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((user, password))
        return AuthResult(success=password == self.password, handled=False)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.mails.append(Mail(str(envelope.mail_from), list(envelope.rcpt_tos), message))
        return "250 OK"

    def start(self) -> None:
        auth: dict[str, Any] = {}
        if self.password is not None:
            auth = {"authenticator": self._authenticate, "auth_require_tls": self.tls is not None}
        if self.tls is not None:
            auth |= {"tls_context": self.tls, "require_starttls": True}
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **auth)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def settings(self) -> dict[str, Any]:
        return {"smtp_host": "127.0.0.1", "smtp_port": self.port}

    def env(self) -> dict[str, str]:
        return {"S2SQ_SMTP_HOST": "127.0.0.1", "S2SQ_SMTP_PORT": str(self.port)}

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.mails if address in m.rcpt]


@asynccontextmanager
async def mail_sink() -> AsyncIterator[MailSink]:
    sink = MailSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


HOOK_SECRET = "hook-secret"
"""The webhook secret the `hooks` fixture's receiver verifies signatures with."""


@dataclass
class Hook:
    body: dict[str, Any]
    signed: bool


@dataclass
class HookSink:
    """A webhook receiver that checks each signature with `secret`."""

    secret: str
    url: str = ""
    hooks: list[Hook] = field(default_factory=list)
    status: int = 200

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.hooks.append(Hook(orjson.loads(raw),
                               verify(self.secret, raw, request.headers.get(SIGNATURE_HEADER))))
        return web.Response(status=self.status, text="ok")

    def events(self, event: str, client: str | None = None) -> list[dict[str, Any]]:
        return [h.body for h in self.hooks
                if h.body["event"] == event and (client is None or h.body["client_id"] == client)]


@asynccontextmanager
async def hook_sink(secret: str) -> AsyncIterator[HookSink]:
    sink = HookSink(secret)
    app = web.Application()
    app.router.add_post("/hooks/{client}", sink.handle)
    async with serve(app) as base:
        sink.url = f"{base}/hooks"
        yield sink
