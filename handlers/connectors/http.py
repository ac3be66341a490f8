"""The generic HTTP connector (SPEC §7): JSON over HTTP to a client's channel, catalog, etc.

The one connector layer: every call a handler makes to another system (this
connector, its Magento 2 subclass, image downloads, webhooks) decides what a
response means with the pure `classify_status` and `http_error`, and maps
aiohttp's exceptions to `TransientError` in one place, `transport_errors`.
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

from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from yarl import URL

from common.clients import Connection
from daemon import __version__
from handlers.errors import HandlerError, PermanentError, TransientError

if TYPE_CHECKING:
    from handlers.connectors.images import Image

Outcome = Literal["ok", "transient", "permanent"]

BODY_QUOTE_CHARS = 200
"""How much of a response body an error message quotes."""
_BODY_READ_BYTES = 4096  # enough for 200 characters after whitespace collapses, even in UTF-8


USER_AGENT = f"s2s-queue/{__version__}"
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


Fetch = Callable[[str], Awaitable["Image"]]
"""Downloads an image URL (host-checked, size-capped, sniffed): for channels that want bytes."""


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


def http_error(
    method: str, url_path: str, status: int, body_text: str, *, secrets: Iterable[str] = ()
) -> HandlerError:
    """The error for a non-2xx response: `PUT /products/ABC-1 → HTTP 422: {"message":…}`.

    `url_path` is reduced to its path, so a query string or credentials passed
    by mistake are not shown; each of `secrets` found in the body is blanked.
    """
    path = urlsplit(url_path).path or "/"
    snippet = quote_body(body_text, secrets)
    message = f"{method} {path} → HTTP {status}" + (f": {snippet}" if snippet else "")
    error = TransientError if classify_status(status) == "transient" else PermanentError
    return error(message)


def quote_body(body_text: str, secrets: Iterable[str] = ()) -> str:
    """The start of a response body for an error message: whitespace collapsed, at most
    `BODY_QUOTE_CHARS` characters, each of `secrets` blanked out."""
    for secret in secrets:
        if secret:
            body_text = body_text.replace(secret, "***")
    text = " ".join(body_text.split())
    return text if len(text) <= BODY_QUOTE_CHARS else text[:BODY_QUOTE_CHARS] + "…"


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


@contextmanager
def transport_errors(method: str, url: URL, timeout: aiohttp.ClientTimeout) -> Iterator[None]:
    """Turn aiohttp's connection-level failures into one readable `TransientError`.

    The one place they are mapped (STYLE 6): every request a connector or
    handler makes goes through it.
    """
    try:
        yield
    except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        reason = _reason(exc, timeout)
        raise TransientError(f"{method} {display_url(url)} failed: {reason}") from exc


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


def _reason(exc: BaseException, timeout: aiohttp.ClientTimeout) -> str:
    """A few plain words for a connection-level failure."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout.total:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        os_error = exc.os_error
        return f"cannot connect: {os_error.strerror or os_error or type(os_error).__name__}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    return f"{type(exc).__name__}: {exc}"


def display_url(url: URL) -> str:
    """The URL without credentials, query or fragment, for messages."""
    return f"{url.origin()}{url.raw_path}"


def _decode(payload: bytes) -> Any:
    try:
        return orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return None
