"""Signed webhooks (SPEC section 7).

The body is `{"event", "client_id", "message_id", "data"}` as JSON; the
header `X-S2S-Signature: sha256=<hex>` is the HMAC-SHA256 of the raw body
with the client's webhook secret. `sign` and `verify` are pure; `post` does
the I/O and says whether a failure is worth retrying (SPEC section 7's rule,
`common.http.classify_status`: 408, 429, 5xx, timeouts and
connection errors are transient). Redirects are not followed: the signed
body goes to the configured URL or nowhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from common.http import classify_status, quote_body, read_start

SIGNATURE_HEADER = "X-S2S-Signature"


def body(event: str, client_id: str, message_id: str | None, data: dict[str, Any]) -> bytes:
    """The raw webhook body (the bytes that are signed).

    JSON as it came: what orjson cannot write (an integer past 64 bits, a lone
    surrogate in a producer's string) is written by the standard encoder, exactly.
    """
    value = {"event": event, "client_id": client_id, "message_id": message_id, "data": data}
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def sign(secret: str, raw: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of raw with secret>`."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def verify(secret: str, raw: bytes, header: str | None) -> bool:
    """True when `header` is the signature of `raw` (constant-time compare)."""
    return header is not None and hmac.compare_digest(sign(secret, raw), header)


class WebhookError(Exception):
    """The receiver did not take the webhook; `permanent` when trying again cannot help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def _host(url: str) -> str:
    """Scheme, host and port only: a URL may hold a password in its userinfo, a token in its
    path or query (pure)."""
    parts = urlsplit(url)
    host = parts.hostname
    if not parts.scheme or not host:
        return "the webhook URL"
    try:
        port = parts.port
    except ValueError:  # out of range: aiohttp refuses the URL; show the host alone
        port = None
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _failure(exc: Exception) -> str:
    """A failure in plain words; aiohttp's InvalidURL quotes the whole URL, so it is not shown."""
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a valid URL"
    return f"{type(exc).__name__}: {exc}"


async def post(session: aiohttp.ClientSession, url: str, secret: str, raw: bytes,
               timeout: float) -> None:
    """POST `raw` signed with `secret` to `url`.

    Raises:
        WebhookError: quoting the status and the start of the body, never the URL's
            userinfo, path or query.
    """
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, raw),
               "User-Agent": "s2s-queue"}
    try:
        async with session.post(url, data=raw, headers=headers, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            outcome = classify_status(resp.status)
            if outcome == "ok":
                return
            start = quote_body(await read_start(resp), (secret,))
            permanent = outcome == "permanent"
            raise WebhookError(f"webhook {_host(url)} answered HTTP {resp.status}: {start}",
                               permanent=permanent)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WebhookError(f"webhook {_host(url)}: {_failure(exc)}",
                           permanent=isinstance(exc, aiohttp.InvalidURL)) from None
