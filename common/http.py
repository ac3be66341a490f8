"""HTTP pieces every outgoing call shares: the connectors, image downloads and webhooks.

    classify_status(status)    pure: ok, transient (408, 429, 5xx) or permanent
    quote_body(text, secrets)  pure: the start of a body for a message, secrets blanked
    display_url(url)           pure: a URL without credentials, query or fragment
    read_start(resp)           the first few KB of a response body, as text

What a failure then becomes is the caller's: a handler's `TransientError` or
`PermanentError` (handlers/connectors/errors.py), a `WebhookError` (common/webhooks.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import aiohttp
from yarl import URL

from common import __version__

Outcome = Literal["ok", "transient", "permanent"]

BODY_QUOTE_CHARS = 200
"""How much of a response body an error message quotes."""
_BODY_READ_BYTES = 4096  # enough for 200 characters after whitespace collapses, even in UTF-8

USER_AGENT = f"s2s-queue/{__version__}"


def classify_status(status: int) -> Outcome:
    """What an HTTP status means for the item: succeeded, try again later, or give up."""
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or 500 <= status < 600:
        return "transient"
    # Other 4xx: the peer refused this request; sending it again will not help.
    # 3xx: we never follow redirects (a redirected PUT may turn into a GET and the
    # token would follow to another host), so a redirect means base_url is wrong,
    # which a retry will not fix.  1xx as a final status, or anything outside
    # 100-599, is a broken peer: park it for a person rather than loop on it.
    return "permanent"


def quote_body(body_text: str, secrets: Iterable[str] = ()) -> str:
    """The start of a response body for an error message: whitespace collapsed, at most
    `BODY_QUOTE_CHARS` characters, each of `secrets` blanked out."""
    for secret in secrets:
        if secret:
            body_text = body_text.replace(secret, "***")
    text = " ".join(body_text.split())
    return text if len(text) <= BODY_QUOTE_CHARS else text[:BODY_QUOTE_CHARS] + "…"


def display_url(url: URL) -> str:
    """The URL without credentials, query or fragment, for messages."""
    return f"{url.origin()}{url.raw_path}"


async def read_start(resp: aiohttp.ClientResponse) -> str:
    """The first few KB of the body as text: enough to quote, without reading a huge page."""
    chunks: list[bytes] = []
    size = 0
    while size < _BODY_READ_BYTES:
        chunk = await resp.content.read(_BODY_READ_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    raw = b"".join(chunks)
    try:
        return raw.decode(resp.charset or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", "replace")
