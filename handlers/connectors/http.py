"""The generic HTTP connector (SPEC §7): JSON over HTTP to a client's channel, catalog, etc.

The one connector layer: every call a handler makes to another system (this
connector, its Magento 2 subclass, image downloads) decides what a response
means with the pure `classify_status` (common/http.py, which webhooks use too)
and `http_error`, and maps aiohttp's exceptions to `TransientError` in one
place, `transport_errors` (both in connectors/errors.py).
`HttpConnector` also holds the product and image operations of SPEC §7's
table; a connector for another API (connectors/magento2.py) overrides them.

    aiohttp.ClientConnectionError, TimeoutError  -> TransientError  "PUT https://host/p failed: …"
    HTTP 408, 429, 5xx                           -> TransientError  "PUT /p → HTTP 503: <body>"
    HTTP 1xx, 3xx, other 4xx                     -> PermanentError  "PUT /p → HTTP 422: <body>"

The token goes in the Authorization header and nowhere else: messages show
the URL without credentials or query, and a body that echoes the token has it
blanked out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from common.clients import Connection
from common.http import (
    BODY_QUOTE_CHARS,
    USER_AGENT,
    Outcome,
    classify_status,
    display_url,
    quote_body,
    read_start,
)
from handlers.connectors.errors import http_error, transport_errors
from handlers.connectors.images import Image
from handlers.errors import PermanentError

__all__ = [  # with the HTTP pieces from common.http and connectors/errors.py, as before
    "BODY_QUOTE_CHARS", "GONE", "USER_AGENT", "Fetch", "HttpConnector", "ImageEntry", "Outcome",
    "classify_status", "display_url", "http_error", "quote_body", "read_start",
    "transport_errors",
]

GONE = (404, 410)
"""Statuses that mean a deleted thing is not there: the delete is done (idempotent)."""


@dataclass(frozen=True, slots=True)
class ImageEntry:
    """One product image as `image.sync` describes it (its `url` host already checked)."""

    sku: str
    image_id: str
    url: str
    label: str | None = None
    position: int | None = None
    roles: tuple[str, ...] = ()


Fetch = Callable[[str], Awaitable[Image]]
"""Downloads an image URL (host-checked, size-capped, sniffed): for channels that want bytes."""


class HttpConnector:
    """JSON requests to one client's system, on the daemon's shared `aiohttp.ClientSession`.

    Cheap to build (one per item); it does not own the session.  Every request
    carries the SPEC §7 headers, the item's message id as `Idempotency-Key`,
    and a timeout: the connection's own, else the daemon's default.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        connection: Connection,
        client_id: str,
        *,
        timeout: float,
    ) -> None:
        self._session = session
        self._base = URL(connection.base_url.rstrip("/"))
        self._client_id = client_id
        seconds = connection.timeout or timeout
        self._timeout = aiohttp.ClientTimeout(total=seconds)
        token = connection.token.get_secret_value() if connection.token else ""
        self._secrets = (token,) if token else ()
        self._headers = {
            "X-S2S-Client": client_id,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"HttpConnector(client_id={self._client_id!r}, base_url={display_url(self._base)!r})"

    async def put(self, path_segments: Sequence[str], json: Any, *, message_id: str) -> Any:
        """`PUT` `json` to the path; see `request`."""
        return await self.request("PUT", path_segments, message_id=message_id, json=json)

    async def post(self, path_segments: Sequence[str], json: Any, *, message_id: str) -> Any:
        """`POST` `json` to the path; see `request`."""
        return await self.request("POST", path_segments, message_id=message_id, json=json)

    async def delete(
        self, path_segments: Sequence[str], *, message_id: str, accept: Collection[int] = ()
    ) -> Any:
        """`DELETE` the path; statuses in `accept` (say 404) count as success too."""
        return await self.request("DELETE", path_segments, message_id=message_id, accept=accept)

    async def request(
        self,
        method: str,
        path_segments: Sequence[str],
        *,
        message_id: str,
        json: Any = None,
        accept: Collection[int] = (),
    ) -> Any:
        """Send one request to `base_url/seg1/seg2...`, each segment URL-escaped.

        `json=None` sends no body.  Statuses in `accept` count as success.
        Returns the decoded body when it is JSON, else None: a successful write
        is not turned into a failure because the peer answered with odd JSON.

        Raises:
            TransientError: timeout, connection error, HTTP 408/429/5xx.
            PermanentError: any other status outside 2xx and `accept`; a `.` or `..` segment.
        """
        url = self.url(path_segments)
        headers = {**self._headers, "Idempotency-Key": message_id}
        data = None if json is None else orjson.dumps(json)
        with transport_errors(method, url, self._timeout):
            async with self._session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                if classify_status(resp.status) != "ok" and resp.status not in accept:
                    body = self.describe_body(await read_start(resp))
                    raise http_error(method, url.raw_path, resp.status, body, secrets=self._secrets)
                payload = await resp.read()
                is_json = resp.content_type == "application/json" or resp.content_type.endswith(
                    "+json"
                )
        return _decode(payload) if is_json else None

    def describe_body(self, body_text: str) -> str:
        """The part of an error response worth quoting; a connector for one API may tidy it."""
        return body_text

    # -- what the product and image handlers ask of a channel or catalog (SPEC §7) ----

    async def put_product(self, sku: str, product: Mapping[str, Any], *, message_id: str) -> None:
        """Create or update: `PUT products/{sku}` with the product as body."""
        await self.put(("products", sku), product, message_id=message_id)

    async def delete_product(self, sku: str, *, message_id: str) -> None:
        """`DELETE products/{sku}`; 404 or 410 mean it is gone already, which is what was asked."""
        await self.delete(("products", sku), message_id=message_id, accept=GONE)

    async def put_image(self, entry: ImageEntry, fetch: Fetch, *, message_id: str) -> None:
        """`PUT products/{sku}/images/{image_id}` with `{"url": ...}` (and label, position, roles
        when given): the channel fetches the image itself, so `fetch` is not called."""
        body: dict[str, Any] = {"url": entry.url}
        body |= {k: v for k, v in (("label", entry.label), ("position", entry.position)) if v}
        if entry.roles:
            body["roles"] = list(entry.roles)
        await self.put(("products", entry.sku, "images", entry.image_id), body,
                       message_id=message_id)

    async def delete_image(self, sku: str, image_id: str, *, message_id: str) -> None:
        """`DELETE products/{sku}/images/{image_id}`; gone already counts as done."""
        await self.delete(("products", sku, "images", image_id), message_id=message_id,
                          accept=GONE)

    def url(self, path_segments: Sequence[str]) -> URL:
        """`base_url` joined with the escaped segments; PermanentError on `.` or `..`.

        Dot segments are refused because a peer or proxy may resolve them, so a
        SKU of ".." would address the collection, or the base, instead.
        """
        if isinstance(path_segments, str):
            raise TypeError("path_segments must be a sequence of segments, not a str")
        for seg in path_segments:
            if seg in (".", ".."):
                raise PermanentError(f"path segment {seg!r} is not allowed in a URL")
        escaped = "/".join(quote(seg, safe="") for seg in path_segments)
        return URL(f"{self._base}/{escaped}", encoded=True)


def _decode(payload: bytes) -> Any:
    try:
        return orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return None
