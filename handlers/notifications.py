"""`notification.email` and `notification.webhook`: messages a producer asks the daemon to send.

They reuse the daemon's own senders, the ones failure notifications use
(`common.mail.send`, `common.webhooks.post`), so there is one SMTP path and one
webhook path, each with one error classification:

* email goes through `S2SQ_SMTP_*` (STARTTLS and login when set), plain text
  with an optional HTML alternative, Message-ID derived from the item's
  message id (a re-sent item carries the same one, so receivers can drop it);
* a webhook goes to the client's `webhook_url`, signed with its
  `webhook_secret` (`X-S2S-Signature: sha256=...`), never to a URL from the
  payload.
"""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from common import mail, webhooks
from common.clients import check_email
from handlers.base import ONE_LINE, Context, Handler, Item
from handlers.errors import PermanentError, TransientError

log = structlog.get_logger()

Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(check_email)]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=998), ONE_LINE]


class EmailPayload(BaseModel):
    """A mail to send: plain text, with an optional HTML alternative."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"to": ["buyer@example.com"], "subject": "Your order SO-1001 has shipped",
         "text": "Hello,\n\nyour order is on its way.\n",
         "html": "<p>Your order is on its way.</p>"},
    ]})

    to: Annotated[list[Email], Field(min_length=1, max_length=50)]
    subject: Subject
    text: Annotated[str, StringConstraints(min_length=1)]
    html: str | None = None


class WebhookPayload(BaseModel):
    """A signed webhook to the client's `webhook_url`."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"event": "order.shipped", "data": {"order_id": "SO-1001", "carrier": "DHL"}},
    ]})

    event: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")] = Field(
        description="the event name the receiver sees: 1-100 of A-Z a-z 0-9 _ . : -")
    data: dict[str, Any]


async def send_email(item: Item[EmailPayload], ctx: Context) -> None:
    """Send the mail over the daemon's SMTP settings."""
    p = item.payload
    message = mail.Mail(tuple(p.to), (), p.subject, p.text, p.html or "",
                        f"item:{item.client_id}:{item.message_id}")
    try:
        refused = await mail.send(message, ctx.settings)
    except mail.MailError as exc:
        raise (PermanentError if exc.permanent else TransientError)(str(exc)) from None
    if refused:  # the others have it: a retry would send it to them twice
        log.warning("mail.recipients_refused", client_id=item.client_id,
                    message_id=item.message_id, refused=refused)


async def send_webhook(item: Item[WebhookPayload], ctx: Context) -> None:
    """POST `{"event", "client_id", "message_id", "data"}`, signed, to the client's webhook_url."""
    config = ctx.client(item.client_id)
    if config.webhook_url is None or config.webhook_secret is None:
        raise PermanentError(
            f"client '{item.client_id}' has no webhook_url in the clients file "
            f"([clients.{item.client_id}] webhook_url and webhook_secret)"
        )
    raw = webhooks.body(item.payload.event, item.client_id, item.message_id, item.payload.data)
    try:
        await webhooks.post(ctx.http, config.webhook_url, config.webhook_secret.get_secret_value(),
                            raw, ctx.settings.webhook_timeout)
    except webhooks.WebhookError as exc:
        raise (PermanentError if exc.permanent else TransientError)(str(exc)) from None


HANDLERS = (
    Handler(type="notification.email", payload=EmailPayload, func=send_email,
            queue="nonblocking", description="send an email over SMTP"),
    Handler(type="notification.webhook", payload=WebhookPayload, func=send_webhook,
            queue="nonblocking", description="POST a signed JSON webhook to the client's URL"),
)
