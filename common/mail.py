"""Failure emails: rendered from jinja2 templates, sent with aiosmtplib.

`render()` is pure (tested and previewed without SMTP): it turns a queued
notification into a subject, a plain-text part and an HTML part that reads
well on a phone. `send()` does the I/O and sorts SMTP errors into ones worth
retrying and ones that never succeed (a refused recipient, say).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol
from urllib.parse import quote

import aiosmtplib
import jinja2
from pydantic import SecretStr

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("common", "templates/mail"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

_ACCENT = {"parked": "#cf222e", "failed": "#bc4c00", "digest": "#bc4c00"}


class SmtpSettings(Protocol):
    """The settings `send` reads (`S2SQ_SMTP_*`); the daemon's `Settings` has them."""

    @property
    def smtp_host(self) -> str: ...
    @property
    def smtp_port(self) -> int: ...
    @property
    def smtp_from(self) -> str: ...
    @property
    def smtp_username(self) -> str | None: ...
    @property
    def smtp_password(self) -> SecretStr | None: ...
    @property
    def smtp_starttls(self) -> bool: ...
    @property
    def smtp_timeout(self) -> float: ...


class RenderSettings(Protocol):
    """The settings `render` reads: where the console is, how long a digest gathers."""

    @property
    def console_base(self) -> str: ...
    @property
    def notify_digest_window(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Mail:
    """One rendered email, ready to send (JSON-able through `as_dict`)."""

    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    text: str
    html: str
    ref: str  # the notification id: the Message-ID is derived from it

    def as_dict(self) -> dict[str, Any]:
        return {"to": list(self.to), "cc": list(self.cc), "subject": self.subject,
                "text": self.text, "html": self.html, "ref": self.ref}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mail:
        return cls(tuple(data["to"]), tuple(data["cc"]), str(data["subject"]),
                   str(data["text"]), str(data["html"]), str(data["ref"]))


def recipients(client_emails: Sequence[str], admin_emails: Sequence[str]) -> tuple[
        tuple[str, ...], tuple[str, ...]]:
    """(to, cc): the client's addresses, admins copied; admins alone when the client has none."""
    if client_emails:
        return tuple(client_emails), tuple(e for e in admin_emails if e not in client_emails)
    return tuple(admin_emails), ()


def render(kind: str, job: dict[str, Any], *, client_name: str, to: tuple[str, ...],
           cc: tuple[str, ...], settings: RenderSettings,
           digest: dict[str, Any] | None = None) -> Mail:
    """The email for one notification (`kind`: parked, failed or digest) (pure)."""
    client_id = str(job["client_id"])
    name = client_name or client_id
    base = settings.console_base
    values: dict[str, Any] = {
        "client_id": client_id, "client_name": name, "accent": _ACCENT[kind],
        "recipients": ", ".join((*to, *cc)),
        "type": job.get("type") or "unknown", "message_id": job.get("message_id") or "none",
        "attempts": job.get("attempts") or 0, "at": _when(job.get("at")),
        "error": job.get("error") or "", "summary": job.get("summary") or "",
    }
    mid = shlex.quote(str(job.get("message_id") or ""))
    if kind == "parked":
        values |= {
            "headline": f"{name}: queue stopped at {values['summary'] or values['type']}",
            "console_link": f"{base}/clients/{quote(client_id, safe='')}",
            "retry_command": f"s2s-queue retry {client_id} --message-id {mid}",
            "skip_command": f"s2s-queue skip {client_id} --message-id {mid} --reason '...'",
        }
    elif kind == "failed":
        values |= {
            "headline": f"{name}: {values['summary'] or values['type']} failed",
            "console_link": f"{base}/failed?client_id={quote(client_id, safe='')}",
            "retry_command": f"s2s-queue failed retry {mid}",
            "skip_command": f"s2s-queue failed skip {mid}",
            "window_minutes": _minutes(settings.notify_digest_window),
        }
    else:
        values |= _digest_values(digest or {}, name, client_id, base)
    subject = f"[s2s-queue] {values['headline']}"
    values["subject"] = subject
    text = _env.get_template(f"{kind}.txt.j2").render(values)
    html = _env.get_template(f"{kind}.html.j2").render(values)
    return Mail(to, cc, subject, text, html, str(job.get("id") or ""))


def _digest_values(digest: dict[str, Any], name: str, client_id: str, base: str) -> dict[
        str, Any]:
    count = int(digest.get("count") or 0)
    types = sorted((digest.get("types") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    entries = [{**e, "summary": e.get("summary") or "", "at": _when(e.get("at"))}
               for e in digest.get("entries") or []]
    return {
        "headline": f"{name}: {count} more failed item{'s' if count != 1 else ''}",
        "count": count, "entries": entries,
        "type_rows": [(t, f"{n} failed") for t, n in types],
        "console_link": f"{base}/failed?client_id={quote(client_id, safe='')}",
        "list_command": f"s2s-queue failed list --client {client_id}",
    }


def _when(at: Any) -> str:
    """`2026-11-28T04:25:13.123Z` as `2026-11-28 04:25:13`."""
    text = str(at or "")
    return text.replace("T", " ").split(".")[0].removesuffix("Z")


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:g} seconds"
    return f"{seconds / 60:g} minutes"


_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def header(value: str) -> str:
    """`value` as one line for a mail header: each run of control characters (line breaks
    included) becomes one space (pure).

    Defence in depth: payloads are checked at the edge (`handlers.base.one_line`),
    but a summary or name from elsewhere with a line break in it would make
    `EmailMessage` refuse the header, and the mail could never be built.
    """
    return _NOT_ONE_LINE.sub(" ", value).strip()


def message(mail: Mail, sender: str) -> EmailMessage:
    """The MIME message: text first, HTML (when there is some) as the alternative; a stable
    Message-ID derived from `mail.ref`. Every header is one line (`header`)."""
    msg = EmailMessage()
    msg["From"] = header(sender)
    msg["To"] = header(", ".join(mail.to))
    if mail.cc:
        msg["Cc"] = header(", ".join(mail.cc))
    msg["Subject"] = header(mail.subject)
    msg["Date"] = formatdate(usegmt=True)
    digest = hashlib.sha256(mail.ref.encode()).hexdigest()[:32]
    msg["Message-ID"] = f"<{digest}@s2s-queue>"
    msg.set_content(mail.text)
    if mail.html:
        msg.add_alternative(mail.html, subtype="html")
    return msg


class MailError(Exception):
    """Sending failed; `permanent` when trying again cannot help."""

    def __init__(self, message: str, *, permanent: bool, settings: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        # Caused by our SMTP settings (login refused, sender refused): fixing them
        # makes it succeed, so failure notifications keep trying meanwhile.
        self.settings = settings


async def send(mail: Mail, settings: SmtpSettings) -> dict[str, str]:
    """Send `mail` over SMTP (STARTTLS and login when set).

    Returns the recipients the server refused while it took the mail for the
    others (`{address: "550 ..."}`); when it refuses them all, that is an error.

    Raises:
        MailError: with a message that never holds the password.
    """
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    try:
        refused, _ = await aiosmtplib.send(
            message(mail, settings.smtp_from), hostname=settings.smtp_host,
            port=settings.smtp_port, username=settings.smtp_username, password=password,
            start_tls=settings.smtp_starttls, use_tls=False, timeout=settings.smtp_timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        each = ", ".join(f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients)
        raise MailError(f"SMTP refused every recipient: {each}", permanent=True) from None
    except aiosmtplib.SMTPSenderRefused as exc:
        raise MailError(f"SMTP refused the sender {exc.sender}: {exc.code} {exc.message}",
                        permanent=True, settings=True) from None
    except aiosmtplib.SMTPResponseException as exc:
        permanent = 500 <= exc.code < 600 and exc.code != 530  # 530: auth needed (config)
        raise MailError(f"SMTP {exc.code}: {exc.message}", permanent=permanent,
                        settings=exc.code in (530, 534, 535)) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        where = f"{settings.smtp_host}:{settings.smtp_port}"
        raise MailError(f"SMTP server {where}: {type(exc).__name__}: {exc}",
                        permanent=False) from None
    return {address: f"{r.code} {r.message}" for address, r in refused.items()}
