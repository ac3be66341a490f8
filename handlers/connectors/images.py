"""Downloading images: only from a client's allowed hosts, only images, never too big.

    refusal(url, allowed)   pure: why a URL may not be fetched, or None
    address_kind(address)   pure: why an address is not public (loopback, private...), or None
    sniff(head)             pure: (MIME type, extension) from the first bytes, or None
    image_session()         the session downloads use: public addresses only, no cookies
    download(...)           the I/O: GET, each redirect checked again, the body read with a cap

Where an image may come from is the client's setting, never the payload's
(SPEC §7): the host of its `[clients.<id>.source]` base_url and its
`allowed_image_hosts`, on ports 80 and 443 unless an entry names another
(`cdn.acme.example:8080`).  A host *name* must resolve to public addresses
only: loopback, private, link-local (cloud metadata), multicast, reserved and
unspecified addresses are refused after resolving, by the session's resolver,
so the check and the connection use one answer and a name that resolves
elsewhere a moment later (DNS rebinding) cannot slip between them.  Such an
address is reached only when the URL's host is the address itself and an
entry names it (`10.0.0.5`, `127.0.0.1:8080`): aiohttp does not resolve an
address, and the client's settings name it explicitly.
Redirects are followed by hand, at most
`MAX_REDIRECTS`, and each hop must be on an allowed host too, so a CDN's
`http → https` hop works while a redirect to anywhere else is refused.
No token is sent: image hosts are public (a CDN), and a token must never
follow a redirect.  Whether the bytes are an image is decided from the bytes,
not from the Content-Type the server claims: their first bytes while the body
streams in (so a large HTML page stops after a dozen bytes), then Pillow
opens and verifies the whole image (a PNG with a broken chunk, a truncated
file).  SVG is refused (it can carry scripts).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import socket
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import PIL
import PIL.Image
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from common.clients import host_entry
from common.http import classify_status, display_url, read_start
from handlers.connectors.errors import http_error, transport_errors
from handlers.errors import PermanentError

HostPort = tuple[str, int | None]
"""An allowed host and the port its entry names (None: only 80 and 443)."""

MAX_REDIRECTS = 5
PORTS = (80, 443)
"""The ports an allowed host may be fetched on without naming the port."""
_METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_KINDS = "a PNG, JPEG, GIF or WebP image"
_PIL_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")


@dataclass(frozen=True, slots=True)
class Image:
    """A downloaded image that passed every check."""

    data: bytes
    mime: str
    extension: str
    url: str  # where it came from, without query: for messages and logs
    sha256: str  # hex digest of `data`: names the stored file


def sniff(head: bytes) -> tuple[str, str] | None:
    """`(mime, extension)` when `head` starts like a PNG, JPEG, GIF or WebP file, else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif", "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None


def refusal(url: URL, allowed: Collection[HostPort]) -> str | None:
    """Why `url` may not be fetched (scheme, credentials, host or port not allowed), or None."""
    if url.scheme not in ("http", "https") or not url.host:
        return "not an http:// or https:// URL with a host"
    if url.user is not None or url.password is not None:
        return "a URL with credentials is not allowed"
    host = url.host.lower().rstrip(".")
    ports = {port for name, port in allowed if name == host}
    if not ports:
        hosts = ", ".join(sorted(host_entry(name, port) for name, port in allowed))
        return (f"host '{host}' is neither the client's source host nor in its "
                f"allowed_image_hosts ({hosts})")
    if url.port not in PORTS and url.port not in ports:
        return (f"port {url.port} is not allowed: only 80 and 443, unless "
                f"allowed_image_hosts names '{host_entry(host, url.port)}'")
    return None


def address_kind(address: str) -> str | None:
    """Why `address` is not a public address an image may come from, or None (pure).

    An IPv4 address inside an IPv6 one (`::ffff:127.0.0.1`, 6to4) is judged as
    itself; a zone (`fe80::1%eth0`) is ignored.
    """
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is not None:
            return address_kind(str(inner))
    if ip in _METADATA:
        return "cloud metadata"
    for kind, found in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                        ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                        ("reserved", ip.is_reserved), ("private", ip.is_private),
                        ("non-public", not ip.is_global)):
        if found:
            return kind
    return None


class AddressRefused(Exception):
    """Raised by `PublicResolver` when a name resolves to an address that is not public."""


class PublicResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then refuses the whole answer when any
    address in it is not public (`address_kind`).

    The connector connects only to the addresses this returns, so what was
    checked is what is connected to. Not an OSError: aiohttp would turn that
    into a connection error, which is retried; this is permanent.
    """

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            kind = address_kind(answer["host"])
            if kind is not None:
                raise AddressRefused(
                    f"host '{host.rstrip('.')}' resolves to {answer['host']}, a {kind} address "
                    "(only an allowed_image_hosts entry that is the address itself allows one)")
        return answers

    async def close(self) -> None:
        await self._inner.close()


@asynccontextmanager
async def image_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The session `download` needs: names resolve to public addresses only
    (`PublicResolver`), no cookies, no proxy from the environment."""
    resolver = PublicResolver()
    connector = aiohttp.TCPConnector(resolver=resolver)
    try:
        async with aiohttp.ClientSession(connector=connector,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            yield session
    finally:
        await resolver.close()  # a resolver passed in is not closed by its connector


def parse_url(text: str) -> URL:
    """The URL, or PermanentError naming what is wrong with it."""
    try:
        return URL(text)
    except ValueError as exc:
        raise PermanentError(f"image URL is not a URL: {exc}") from None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    allowed: Collection[HostPort],
    max_bytes: int,
    timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str],
) -> Image:
    """Fetch one image on a session from `image_session()`.

    Raises:
        PermanentError: refused URL, address or redirect, 4xx, not an image, over `max_bytes`.
        TransientError: timeout, connection error, HTTP 408/429/5xx.
    """
    target = parse_url(url)
    reason = refusal(target, allowed)
    if reason:
        raise PermanentError(f"image URL {display_url(target)} refused: {reason}")
    for _ in range(MAX_REDIRECTS + 1):
        try:
            with transport_errors("GET", target, timeout):
                async with session.get(target, headers=headers, timeout=timeout,
                                       allow_redirects=False) as resp:
                    if resp.status not in _REDIRECTS:
                        return await _read_image(resp, target, max_bytes)
                    target = _next_hop(target, resp.headers.get("Location"), allowed)
        except AddressRefused as exc:
            raise PermanentError(f"image URL {display_url(target)} refused: {exc}") from None
    raise PermanentError(f"image URL {display_url(parse_url(url))} redirects more than "
                         f"{MAX_REDIRECTS} times")


def _next_hop(current: URL, location: str | None, allowed: Collection[HostPort]) -> URL:
    if not location:
        raise PermanentError(f"image URL {display_url(current)} redirects without a Location")
    hop = current.join(parse_url(location))
    reason = refusal(hop, allowed)
    if reason:
        raise PermanentError(
            f"image URL {display_url(current)} redirects to {display_url(hop)}, refused: {reason}"
        )
    return hop


async def _read_image(resp: aiohttp.ClientResponse, url: URL, max_bytes: int) -> Image:
    """The body, checked to be an image within `max_bytes` while it streams in."""
    where = display_url(url)
    if classify_status(resp.status) != "ok":
        raise http_error("GET", url.raw_path, resp.status, await read_start(resp))
    declared = resp.content_length
    if declared is not None and declared > max_bytes:
        raise PermanentError(f"image {where} is {declared} bytes, over the limit of "
                             f"{max_bytes} (S2SQ_IMAGE_MAX_BYTES)")
    data = bytearray()
    kind: tuple[str, str] | None = None
    async for chunk in resp.content.iter_chunked(_CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise PermanentError(f"image {where} is over the limit of {max_bytes} bytes "
                                 "(S2SQ_IMAGE_MAX_BYTES)")
        if kind is None and len(data) >= 12:
            kind = _kind_or_refuse(bytes(data[:12]), resp, where)
    body = bytes(data)
    kind = kind or _kind_or_refuse(body, resp, where)
    await asyncio.to_thread(verify, body, kind[0], where)
    return Image(body, kind[0], kind[1], where, hashlib.sha256(body).hexdigest())


def verify(data: bytes, mime: str, where: str) -> None:
    """PermanentError unless Pillow reads `data` as an intact image of type `mime` (CPU-bound)."""
    try:
        # Only the four formats' decoders are tried: less of Pillow faces the download.
        with PIL.Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as image:
            found = PIL.Image.MIME.get(image.format or "")
            image.verify()
    except PIL.UnidentifiedImageError:
        reason = "it cannot be read"
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
    else:
        if found == mime:
            return
        reason = f"it reads as {found or 'something else'}"
    raise PermanentError(f"image {where} starts like {mime} but is not a valid image: {reason}")


def _kind_or_refuse(head: bytes, resp: aiohttp.ClientResponse, where: str) -> tuple[str, str]:
    kind = sniff(head)
    if kind is None:
        claimed = resp.headers.get("Content-Type", "none")[:80]
        raise PermanentError(f"image {where} is not {_KINDS} (Content-Type: {claimed})")
    return kind
